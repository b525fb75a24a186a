from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartQueryRequest(_message.Message):
    __slots__ = ("sql", "node_ids", "ttl_seconds", "author", "tags", "platforms", "labels", "percent", "min_osquery_version", "discovery_sql", "offline_after_seconds", "dry_run")
    SQL_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_OSQUERY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_SQL_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    sql: str
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    author: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    platforms: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    percent: float
    min_osquery_version: str
    discovery_sql: str
    offline_after_seconds: int
    dry_run: bool
    def __init__(self, sql: _Optional[str] = ..., node_ids: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., author: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., platforms: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., percent: _Optional[float] = ..., min_osquery_version: _Optional[str] = ..., discovery_sql: _Optional[str] = ..., offline_after_seconds: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Campaign(_message.Message):
    __slots__ = ("campaign_id", "sql", "target_all", "node_ids", "created_at", "expires_at", "cancelled", "author", "tags", "platforms", "percent", "discovery_sql", "open_targeting", "labels", "min_osquery_version", "targeted")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    TARGET_ALL_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PLATFORMS_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_SQL_FIELD_NUMBER: _ClassVar[int]
    OPEN_TARGETING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_OSQUERY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGETED_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    sql: str
    target_all: bool
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    created_at: int
    expires_at: int
    cancelled: bool
    author: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    platforms: _containers.RepeatedScalarFieldContainer[str]
    percent: float
    discovery_sql: str
    open_targeting: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    min_osquery_version: str
    targeted: int
    def __init__(self, campaign_id: _Optional[str] = ..., sql: _Optional[str] = ..., target_all: _Optional[bool] = ..., node_ids: _Optional[_Iterable[str]] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., cancelled: _Optional[bool] = ..., author: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., platforms: _Optional[_Iterable[str]] = ..., percent: _Optional[float] = ..., discovery_sql: _Optional[str] = ..., open_targeting: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ..., min_osquery_version: _Optional[str] = ..., targeted: _Optional[int] = ...) -> None: ...

class HostState(_message.Message):
    __slots__ = ("node_id", "host_identifier", "state", "status", "message", "row_count", "stats", "delivered_at", "answered_at")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[HostState.State]
        TARGETED: _ClassVar[HostState.State]
        DELIVERED: _ClassVar[HostState.State]
        ANSWERED: _ClassVar[HostState.State]
        FAILED: _ClassVar[HostState.State]
        EXPIRED: _ClassVar[HostState.State]
        OFFLINE: _ClassVar[HostState.State]
    STATE_UNSPECIFIED: HostState.State
    TARGETED: HostState.State
    DELIVERED: HostState.State
    ANSWERED: HostState.State
    FAILED: HostState.State
    EXPIRED: HostState.State
    OFFLINE: HostState.State
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    host_identifier: str
    state: HostState.State
    status: int
    message: str
    row_count: int
    stats: QueryStats
    delivered_at: int
    answered_at: int
    def __init__(self, node_id: _Optional[str] = ..., host_identifier: _Optional[str] = ..., state: _Optional[_Union[HostState.State, str]] = ..., status: _Optional[int] = ..., message: _Optional[str] = ..., row_count: _Optional[int] = ..., stats: _Optional[_Union[QueryStats, _Mapping]] = ..., delivered_at: _Optional[int] = ..., answered_at: _Optional[int] = ...) -> None: ...

class QueryStats(_message.Message):
    __slots__ = ("wall_time_ms", "user_time", "system_time", "memory")
    WALL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    USER_TIME_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_TIME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    wall_time_ms: int
    user_time: int
    system_time: int
    memory: int
    def __init__(self, wall_time_ms: _Optional[int] = ..., user_time: _Optional[int] = ..., system_time: _Optional[int] = ..., memory: _Optional[int] = ...) -> None: ...

class CampaignReport(_message.Message):
    __slots__ = ("campaign", "hosts", "found", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    hosts: _containers.RepeatedCompositeFieldContainer[HostState]
    found: bool
    counts: _containers.ScalarMap[str, int]
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ..., hosts: _Optional[_Iterable[_Union[HostState, _Mapping]]] = ..., found: _Optional[bool] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetCampaignRequest(_message.Message):
    __slots__ = ("campaign_id", "counts_only")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTS_ONLY_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    counts_only: bool
    def __init__(self, campaign_id: _Optional[str] = ..., counts_only: _Optional[bool] = ...) -> None: ...

class CampaignProgress(_message.Message):
    __slots__ = ("campaign", "counts", "hosts", "closed", "done")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    counts: _containers.ScalarMap[str, int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostState]
    closed: bool
    done: bool
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ..., counts: _Optional[_Mapping[str, int]] = ..., hosts: _Optional[_Iterable[_Union[HostState, _Mapping]]] = ..., closed: _Optional[bool] = ..., done: _Optional[bool] = ...) -> None: ...

class ListCampaignsRequest(_message.Message):
    __slots__ = ("include_closed", "status", "author", "exclude_labels", "limit")
    INCLUDE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_LABELS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    include_closed: bool
    status: str
    author: str
    exclude_labels: bool
    limit: int
    def __init__(self, include_closed: _Optional[bool] = ..., status: _Optional[str] = ..., author: _Optional[str] = ..., exclude_labels: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListCampaignsResponse(_message.Message):
    __slots__ = ("campaigns",)
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    campaigns: _containers.RepeatedCompositeFieldContainer[Campaign]
    def __init__(self, campaigns: _Optional[_Iterable[_Union[Campaign, _Mapping]]] = ...) -> None: ...

class WatchCampaignsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CampaignEvent(_message.Message):
    __slots__ = ("kind", "campaign", "node_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[CampaignEvent.Kind]
        OPEN: _ClassVar[CampaignEvent.Kind]
        CLOSE: _ClassVar[CampaignEvent.Kind]
        ANSWERED: _ClassVar[CampaignEvent.Kind]
        SNAPSHOT_DONE: _ClassVar[CampaignEvent.Kind]
    KIND_UNSPECIFIED: CampaignEvent.Kind
    OPEN: CampaignEvent.Kind
    CLOSE: CampaignEvent.Kind
    ANSWERED: CampaignEvent.Kind
    SNAPSHOT_DONE: CampaignEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: CampaignEvent.Kind
    campaign: Campaign
    node_id: str
    def __init__(self, kind: _Optional[_Union[CampaignEvent.Kind, str]] = ..., campaign: _Optional[_Union[Campaign, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("campaign_id", "node_id", "delivered_at", "host_identifier")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    node_id: str
    delivered_at: int
    host_identifier: str
    def __init__(self, campaign_id: _Optional[str] = ..., node_id: _Optional[str] = ..., delivered_at: _Optional[int] = ..., host_identifier: _Optional[str] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("campaign_id", "node_id", "host_identifier", "status", "message", "row_count", "stats", "answered_at")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    node_id: str
    host_identifier: str
    status: int
    message: str
    row_count: int
    stats: QueryStats
    answered_at: int
    def __init__(self, campaign_id: _Optional[str] = ..., node_id: _Optional[str] = ..., host_identifier: _Optional[str] = ..., status: _Optional[int] = ..., message: _Optional[str] = ..., row_count: _Optional[int] = ..., stats: _Optional[_Union[QueryStats, _Mapping]] = ..., answered_at: _Optional[int] = ...) -> None: ...

class ActivityBatch(_message.Message):
    __slots__ = ("deliveries", "answers")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    answers: _containers.RepeatedCompositeFieldContainer[Answer]
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., answers: _Optional[_Iterable[_Union[Answer, _Mapping]]] = ...) -> None: ...

class RecordActivityResponse(_message.Message):
    __slots__ = ("deliveries", "answers")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    deliveries: int
    answers: int
    def __init__(self, deliveries: _Optional[int] = ..., answers: _Optional[int] = ...) -> None: ...

class ListCarvesRequest(_message.Message):
    __slots__ = ("status", "host_identifier", "limit")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    status: str
    host_identifier: str
    limit: int
    def __init__(self, status: _Optional[str] = ..., host_identifier: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class CarveInfo(_message.Message):
    __slots__ = ("session_id", "carve_id", "request_id", "node_id", "host_identifier", "block_count", "block_size", "carve_size", "blocks_received", "bytes_received", "status", "sha256", "compression", "started_at", "updated_at", "completed_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CARVE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CARVE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    carve_id: str
    request_id: str
    node_id: str
    host_identifier: str
    block_count: int
    block_size: int
    carve_size: int
    blocks_received: int
    bytes_received: int
    status: str
    sha256: str
    compression: str
    started_at: int
    updated_at: int
    completed_at: int
    def __init__(self, session_id: _Optional[str] = ..., carve_id: _Optional[str] = ..., request_id: _Optional[str] = ..., node_id: _Optional[str] = ..., host_identifier: _Optional[str] = ..., block_count: _Optional[int] = ..., block_size: _Optional[int] = ..., carve_size: _Optional[int] = ..., blocks_received: _Optional[int] = ..., bytes_received: _Optional[int] = ..., status: _Optional[str] = ..., sha256: _Optional[str] = ..., compression: _Optional[str] = ..., started_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., completed_at: _Optional[int] = ...) -> None: ...

class ListCarvesResponse(_message.Message):
    __slots__ = ("carves",)
    CARVES_FIELD_NUMBER: _ClassVar[int]
    carves: _containers.RepeatedCompositeFieldContainer[CarveInfo]
    def __init__(self, carves: _Optional[_Iterable[_Union[CarveInfo, _Mapping]]] = ...) -> None: ...

class GetCarveRequest(_message.Message):
    __slots__ = ("carve",)
    CARVE_FIELD_NUMBER: _ClassVar[int]
    carve: str
    def __init__(self, carve: _Optional[str] = ...) -> None: ...

class CarveChunk(_message.Message):
    __slots__ = ("carve", "offset", "data")
    CARVE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    carve: CarveInfo
    offset: int
    data: bytes
    def __init__(self, carve: _Optional[_Union[CarveInfo, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
