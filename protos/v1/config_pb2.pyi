from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SetConfigRequest(_message.Message):
    __slots__ = ("config_json", "author")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    author: str
    def __init__(self, config_json: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfigDocument(_message.Message):
    __slots__ = ("version", "config_json", "author", "created_at", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    config_json: str
    author: str
    created_at: int
    sha256: str
    def __init__(self, version: _Optional[int] = ..., config_json: _Optional[str] = ..., author: _Optional[str] = ..., created_at: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class StateVersion(_message.Message):
    __slots__ = ("version", "state_json", "author", "created_at", "sha256", "comment")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    state_json: str
    author: str
    created_at: int
    sha256: str
    comment: str
    def __init__(self, version: _Optional[int] = ..., state_json: _Optional[str] = ..., author: _Optional[str] = ..., created_at: _Optional[int] = ..., sha256: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("candidate_version", "candidate_state_json", "percent", "node_ids", "started_at", "author")
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    candidate_version: int
    candidate_state_json: str
    percent: int
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    started_at: int
    author: str
    def __init__(self, candidate_version: _Optional[int] = ..., candidate_state_json: _Optional[str] = ..., percent: _Optional[int] = ..., node_ids: _Optional[_Iterable[str]] = ..., started_at: _Optional[int] = ..., author: _Optional[str] = ...) -> None: ...

class LabelMembership(_message.Message):
    __slots__ = ("node_id", "labels")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ConfigEvent(_message.Message):
    __slots__ = ("live", "rollout", "memberships", "snapshot")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    live: StateVersion
    rollout: Rollout
    memberships: _containers.RepeatedCompositeFieldContainer[LabelMembership]
    snapshot: bool
    def __init__(self, live: _Optional[_Union[StateVersion, _Mapping]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ..., memberships: _Optional[_Iterable[_Union[LabelMembership, _Mapping]]] = ..., snapshot: _Optional[bool] = ...) -> None: ...

class ApplyStateRequest(_message.Message):
    __slots__ = ("state_json", "author", "dry_run", "comment", "canary_percent", "canary_count")
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CANARY_COUNT_FIELD_NUMBER: _ClassVar[int]
    state_json: str
    author: str
    dry_run: bool
    comment: str
    canary_percent: int
    canary_count: int
    def __init__(self, state_json: _Optional[str] = ..., author: _Optional[str] = ..., dry_run: _Optional[bool] = ..., comment: _Optional[str] = ..., canary_percent: _Optional[int] = ..., canary_count: _Optional[int] = ...) -> None: ...

class GroupDiff(_message.Message):
    __slots__ = ("group", "nodes", "diff")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    group: str
    nodes: int
    diff: str
    def __init__(self, group: _Optional[str] = ..., nodes: _Optional[int] = ..., diff: _Optional[str] = ...) -> None: ...

class ApplyStateResponse(_message.Message):
    __slots__ = ("version", "changed", "diffs", "warnings", "conflicts")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    DIFFS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    version: StateVersion
    changed: bool
    diffs: _containers.RepeatedCompositeFieldContainer[GroupDiff]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    conflicts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[_Union[StateVersion, _Mapping]] = ..., changed: _Optional[bool] = ..., diffs: _Optional[_Iterable[_Union[GroupDiff, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., conflicts: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportStateRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[StateVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[StateVersion, _Mapping]]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("version", "author")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    version: int
    author: str
    def __init__(self, version: _Optional[int] = ..., author: _Optional[str] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("author",)
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    author: str
    def __init__(self, author: _Optional[str] = ...) -> None: ...

class NodeConfigRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class NodeConfigResponse(_message.Message):
    __slots__ = ("config_json", "sha1", "osquery_info_config_hash", "version", "candidate", "group", "blocks", "labels", "tags", "conflicts", "pending")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SHA1_FIELD_NUMBER: _ClassVar[int]
    OSQUERY_INFO_CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    sha1: str
    osquery_info_config_hash: str
    version: int
    candidate: bool
    group: str
    blocks: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    conflicts: _containers.RepeatedScalarFieldContainer[str]
    pending: bool
    def __init__(self, config_json: _Optional[str] = ..., sha1: _Optional[str] = ..., osquery_info_config_hash: _Optional[str] = ..., version: _Optional[int] = ..., candidate: _Optional[bool] = ..., group: _Optional[str] = ..., blocks: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[str]] = ..., conflicts: _Optional[_Iterable[str]] = ..., pending: _Optional[bool] = ...) -> None: ...

class ConfigFetch(_message.Message):
    __slots__ = ("node_id", "sha1", "version", "fetched_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA1_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FETCHED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    sha1: str
    version: int
    fetched_at: int
    def __init__(self, node_id: _Optional[str] = ..., sha1: _Optional[str] = ..., version: _Optional[int] = ..., fetched_at: _Optional[int] = ...) -> None: ...

class ConfigFetchBatch(_message.Message):
    __slots__ = ("fetches",)
    FETCHES_FIELD_NUMBER: _ClassVar[int]
    fetches: _containers.RepeatedCompositeFieldContainer[ConfigFetch]
    def __init__(self, fetches: _Optional[_Iterable[_Union[ConfigFetch, _Mapping]]] = ...) -> None: ...

class RecordConfigFetchesResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    def __init__(self, recorded: _Optional[int] = ...) -> None: ...

class RolloutStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionCount(_message.Message):
    __slots__ = ("version", "sha1", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA1_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: int
    sha1: str
    nodes: int
    def __init__(self, version: _Optional[int] = ..., sha1: _Optional[str] = ..., nodes: _Optional[int] = ...) -> None: ...

class RolloutStatusResponse(_message.Message):
    __slots__ = ("rollout", "live_version", "running", "candidate_nodes")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_NODES_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    live_version: int
    running: _containers.RepeatedCompositeFieldContainer[VersionCount]
    candidate_nodes: _containers.RepeatedCompositeFieldContainer[ConfigFetch]
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ..., live_version: _Optional[int] = ..., running: _Optional[_Iterable[_Union[VersionCount, _Mapping]]] = ..., candidate_nodes: _Optional[_Iterable[_Union[ConfigFetch, _Mapping]]] = ...) -> None: ...

class ListLabelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LabelInfo(_message.Message):
    __slots__ = ("name", "query", "interval", "platforms", "member_node_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    query: str
    interval: int
    platforms: _containers.RepeatedScalarFieldContainer[str]
    member_node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., query: _Optional[str] = ..., interval: _Optional[int] = ..., platforms: _Optional[_Iterable[str]] = ..., member_node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListLabelsResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelInfo]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelInfo, _Mapping]]] = ...) -> None: ...
