from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListDetectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DetectionStatus(_message.Message):
    __slots__ = ("name", "severity", "schedule_s", "last_run_at", "watermark", "lag_s", "last_hits", "total_hits", "open_alerts", "last_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_S_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    LAG_S_FIELD_NUMBER: _ClassVar[int]
    LAST_HITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_HITS_FIELD_NUMBER: _ClassVar[int]
    OPEN_ALERTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    severity: str
    schedule_s: int
    last_run_at: int
    watermark: int
    lag_s: int
    last_hits: int
    total_hits: int
    open_alerts: int
    last_error: str
    def __init__(self, name: _Optional[str] = ..., severity: _Optional[str] = ..., schedule_s: _Optional[int] = ..., last_run_at: _Optional[int] = ..., watermark: _Optional[int] = ..., lag_s: _Optional[int] = ..., last_hits: _Optional[int] = ..., total_hits: _Optional[int] = ..., open_alerts: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class ListDetectionsResponse(_message.Message):
    __slots__ = ("detections", "leader")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[DetectionStatus]
    leader: bool
    def __init__(self, detections: _Optional[_Iterable[_Union[DetectionStatus, _Mapping]]] = ..., leader: _Optional[bool] = ...) -> None: ...

class TestDetectionRequest(_message.Message):
    __slots__ = ("name", "rule_json", "since_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RULE_JSON_FIELD_NUMBER: _ClassVar[int]
    SINCE_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    rule_json: str
    since_s: int
    def __init__(self, name: _Optional[str] = ..., rule_json: _Optional[str] = ..., since_s: _Optional[int] = ...) -> None: ...

class WouldRaise(_message.Message):
    __slots__ = ("dedup_key", "host_identifier", "hits", "rows_json")
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    dedup_key: str
    host_identifier: str
    hits: int
    rows_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dedup_key: _Optional[str] = ..., host_identifier: _Optional[str] = ..., hits: _Optional[int] = ..., rows_json: _Optional[_Iterable[str]] = ...) -> None: ...

class TestDetectionResponse(_message.Message):
    __slots__ = ("sql", "rows", "alerts", "error", "window_start", "window_end")
    SQL_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    sql: str
    rows: int
    alerts: _containers.RepeatedCompositeFieldContainer[WouldRaise]
    error: str
    window_start: int
    window_end: int
    def __init__(self, sql: _Optional[str] = ..., rows: _Optional[int] = ..., alerts: _Optional[_Iterable[_Union[WouldRaise, _Mapping]]] = ..., error: _Optional[str] = ..., window_start: _Optional[int] = ..., window_end: _Optional[int] = ...) -> None: ...
