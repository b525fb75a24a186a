from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("enroll_secret", "host_identifier", "platform_type", "host_details_json", "remote_addr")
    ENROLL_SECRET_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOST_DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    enroll_secret: str
    host_identifier: str
    platform_type: str
    host_details_json: str
    remote_addr: str
    def __init__(self, enroll_secret: _Optional[str] = ..., host_identifier: _Optional[str] = ..., platform_type: _Optional[str] = ..., host_details_json: _Optional[str] = ..., remote_addr: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("ok", "node_key", "node", "reason")
    OK_FIELD_NUMBER: _ClassVar[int]
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    node_key: str
    node: Node
    reason: str
    def __init__(self, ok: _Optional[bool] = ..., node_key: _Optional[str] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "node_key", "host_identifier", "platform", "platform_type", "osquery_version", "enrolled_at", "last_seen_at", "revoked", "found", "hostname")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_TYPE_FIELD_NUMBER: _ClassVar[int]
    OSQUERY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_key: str
    host_identifier: str
    platform: str
    platform_type: str
    osquery_version: str
    enrolled_at: int
    last_seen_at: int
    revoked: bool
    found: bool
    hostname: str
    def __init__(self, node_id: _Optional[str] = ..., node_key: _Optional[str] = ..., host_identifier: _Optional[str] = ..., platform: _Optional[str] = ..., platform_type: _Optional[str] = ..., osquery_version: _Optional[str] = ..., enrolled_at: _Optional[int] = ..., last_seen_at: _Optional[int] = ..., revoked: _Optional[bool] = ..., found: _Optional[bool] = ..., hostname: _Optional[str] = ...) -> None: ...

class WatchNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("kind", "node", "revision")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[NodeEvent.Kind]
        UPSERT: _ClassVar[NodeEvent.Kind]
        REMOVE: _ClassVar[NodeEvent.Kind]
        SNAPSHOT_DONE: _ClassVar[NodeEvent.Kind]
    KIND_UNSPECIFIED: NodeEvent.Kind
    UPSERT: NodeEvent.Kind
    REMOVE: NodeEvent.Kind
    SNAPSHOT_DONE: NodeEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: NodeEvent.Kind
    node: Node
    revision: int
    def __init__(self, kind: _Optional[_Union[NodeEvent.Kind, str]] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("node_key",)
    NODE_KEY_FIELD_NUMBER: _ClassVar[int]
    node_key: str
    def __init__(self, node_key: _Optional[str] = ...) -> None: ...

class Checkin(_message.Message):
    __slots__ = ("node_id", "seen_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    seen_at: int
    def __init__(self, node_id: _Optional[str] = ..., seen_at: _Optional[int] = ...) -> None: ...

class CheckinBatch(_message.Message):
    __slots__ = ("checkins",)
    CHECKINS_FIELD_NUMBER: _ClassVar[int]
    checkins: _containers.RepeatedCompositeFieldContainer[Checkin]
    def __init__(self, checkins: _Optional[_Iterable[_Union[Checkin, _Mapping]]] = ...) -> None: ...

class RecordCheckinsResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    def __init__(self, recorded: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class RevokeNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...
