from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_KIND_UNSPECIFIED: _ClassVar[LogKind]
    RESULT: _ClassVar[LogKind]
    STATUS: _ClassVar[LogKind]
    DISTRIBUTED: _ClassVar[LogKind]
    DISTRIBUTED_STATUS: _ClassVar[LogKind]
    HOST_QUERY: _ClassVar[LogKind]
    HOST_QUERY_STATUS: _ClassVar[LogKind]
LOG_KIND_UNSPECIFIED: LogKind
RESULT: LogKind
STATUS: LogKind
DISTRIBUTED: LogKind
DISTRIBUTED_STATUS: LogKind
HOST_QUERY: LogKind
HOST_QUERY_STATUS: LogKind

class LogBatch(_message.Message):
    __slots__ = ("batch_id", "kind", "node_id", "host_identifier", "received_at", "data_json", "campaign_id", "failover", "line_ids", "answer_by_ms", "repeated_lines")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    LINE_IDS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_BY_MS_FIELD_NUMBER: _ClassVar[int]
    REPEATED_LINES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    kind: LogKind
    node_id: str
    host_identifier: str
    received_at: int
    data_json: bytes
    campaign_id: str
    failover: bool
    line_ids: bytes
    answer_by_ms: int
    repeated_lines: bytes
    def __init__(self, batch_id: _Optional[str] = ..., kind: _Optional[_Union[LogKind, str]] = ..., node_id: _Optional[str] = ..., host_identifier: _Optional[str] = ..., received_at: _Optional[int] = ..., data_json: _Optional[bytes] = ..., campaign_id: _Optional[str] = ..., failover: _Optional[bool] = ..., line_ids: _Optional[bytes] = ..., answer_by_ms: _Optional[int] = ..., repeated_lines: _Optional[bytes] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("batch_id", "ok", "error", "rows", "duplicate", "lines_already_stored")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LINES_ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    ok: bool
    error: str
    rows: int
    duplicate: bool
    lines_already_stored: int
    def __init__(self, batch_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., rows: _Optional[int] = ..., duplicate: _Optional[bool] = ..., lines_already_stored: _Optional[int] = ...) -> None: ...

class AlertEvent(_message.Message):
    __slots__ = ("event_id", "alert_id", "rule", "severity", "event", "dedup_key", "host_identifier", "at", "first_seen", "hits", "rows_json")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    alert_id: str
    rule: str
    severity: str
    event: str
    dedup_key: str
    host_identifier: str
    at: int
    first_seen: int
    hits: int
    rows_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., alert_id: _Optional[str] = ..., rule: _Optional[str] = ..., severity: _Optional[str] = ..., event: _Optional[str] = ..., dedup_key: _Optional[str] = ..., host_identifier: _Optional[str] = ..., at: _Optional[int] = ..., first_seen: _Optional[int] = ..., hits: _Optional[int] = ..., rows_json: _Optional[_Iterable[str]] = ...) -> None: ...

class AlertEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AlertEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AlertEvent, _Mapping]]] = ...) -> None: ...

class StoreAlertsResponse(_message.Message):
    __slots__ = ("stored", "already_stored")
    STORED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    already_stored: int
    def __init__(self, stored: _Optional[int] = ..., already_stored: _Optional[int] = ...) -> None: ...

class SqlRequest(_message.Message):
    __slots__ = ("sql", "max_rows")
    SQL_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    max_rows: int
    def __init__(self, sql: _Optional[str] = ..., max_rows: _Optional[int] = ...) -> None: ...

class SqlResponse(_message.Message):
    __slots__ = ("columns", "types", "rows_json", "error", "total_rows")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROWS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    types: _containers.RepeatedScalarFieldContainer[str]
    rows_json: _containers.RepeatedScalarFieldContainer[str]
    error: str
    total_rows: int
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., types: _Optional[_Iterable[str]] = ..., rows_json: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., total_rows: _Optional[int] = ...) -> None: ...
