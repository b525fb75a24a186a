from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartQueryRequest(_message.Message):
    __slots__ = ("sql", "node_ids", "ttl_seconds", "author", "tags")
    SQL_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: int
    author: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sql: _Optional[str] = ..., node_ids: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[int] = ..., author: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Campaign(_message.Message):
    __slots__ = ("campaign_id", "sql", "target_all", "node_ids", "created_at", "expires_at", "cancelled", "author")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    TARGET_ALL_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    sql: str
    target_all: bool
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    created_at: int
    expires_at: int
    cancelled: bool
    author: str
    def __init__(self, campaign_id: _Optional[str] = ..., sql: _Optional[str] = ..., target_all: _Optional[bool] = ..., node_ids: _Optional[_Iterable[str]] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., cancelled: _Optional[bool] = ..., author: _Optional[str] = ...) -> None: ...

class HostState(_message.Message):
    __slots__ = ("node_id", "host_identifier", "state", "status", "message", "row_count", "stats", "delivered_at", "answered_at")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[HostState.State]
        TARGETED: _ClassVar[HostState.State]
        DELIVERED: _ClassVar[HostState.State]
        ANSWERED: _ClassVar[HostState.State]
        FAILED: _ClassVar[HostState.State]
    STATE_UNSPECIFIED: HostState.State
    TARGETED: HostState.State
    DELIVERED: HostState.State
    ANSWERED: HostState.State
    FAILED: HostState.State
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
    __slots__ = ("campaign", "hosts", "found")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    hosts: _containers.RepeatedCompositeFieldContainer[HostState]
    found: bool
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ..., hosts: _Optional[_Iterable[_Union[HostState, _Mapping]]] = ..., found: _Optional[bool] = ...) -> None: ...

class GetCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class ListCampaignsRequest(_message.Message):
    __slots__ = ("include_closed",)
    INCLUDE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    include_closed: bool
    def __init__(self, include_closed: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("campaign_id", "node_id", "delivered_at")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_AT_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    node_id: str
    delivered_at: int
    def __init__(self, campaign_id: _Optional[str] = ..., node_id: _Optional[str] = ..., delivered_at: _Optional[int] = ...) -> None: ...

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
