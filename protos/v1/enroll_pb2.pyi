from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("enroll_secret", "host_identifier", "platform_type", "host_details_json", "remote_addr", "client_certificate")
    ENROLL_SECRET_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_TYPE_FIELD_NUMBER: _ClassVar[int]
    HOST_DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    enroll_secret: str
    host_identifier: str
    platform_type: str
    host_details_json: str
    remote_addr: str
    client_certificate: ClientCertificate
    def __init__(self, enroll_secret: _Optional[str] = ..., host_identifier: _Optional[str] = ..., platform_type: _Optional[str] = ..., host_details_json: _Optional[str] = ..., remote_addr: _Optional[str] = ..., client_certificate: _Optional[_Union[ClientCertificate, _Mapping]] = ...) -> None: ...

class EnrollManyRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[EnrollRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[EnrollRequest, _Mapping]]] = ...) -> None: ...

class EnrollManyResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[EnrollResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[EnrollResponse, _Mapping]]] = ...) -> None: ...

class ClientCertificate(_message.Message):
    __slots__ = ("subject", "subject_alt_names", "sha256_fingerprint")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ALT_NAMES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    subject_alt_names: _containers.RepeatedScalarFieldContainer[str]
    sha256_fingerprint: str
    def __init__(self, subject: _Optional[str] = ..., subject_alt_names: _Optional[_Iterable[str]] = ..., sha256_fingerprint: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("node_id", "node_key", "host_identifier", "platform", "platform_type", "osquery_version", "enrolled_at", "last_seen_at", "revoked", "found", "hostname", "tags", "group", "pending", "identity", "secret_name", "first_enrolled_at", "hardware_serial", "secret_tags", "os_version")
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
    TAGS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SECRET_NAME_FIELD_NUMBER: _ClassVar[int]
    FIRST_ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_SERIAL_FIELD_NUMBER: _ClassVar[int]
    SECRET_TAGS_FIELD_NUMBER: _ClassVar[int]
    OS_VERSION_FIELD_NUMBER: _ClassVar[int]
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
    tags: _containers.RepeatedScalarFieldContainer[str]
    group: str
    pending: bool
    identity: str
    secret_name: str
    first_enrolled_at: int
    hardware_serial: str
    secret_tags: _containers.RepeatedScalarFieldContainer[str]
    os_version: str
    def __init__(self, node_id: _Optional[str] = ..., node_key: _Optional[str] = ..., host_identifier: _Optional[str] = ..., platform: _Optional[str] = ..., platform_type: _Optional[str] = ..., osquery_version: _Optional[str] = ..., enrolled_at: _Optional[int] = ..., last_seen_at: _Optional[int] = ..., revoked: _Optional[bool] = ..., found: _Optional[bool] = ..., hostname: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., pending: _Optional[bool] = ..., identity: _Optional[str] = ..., secret_name: _Optional[str] = ..., first_enrolled_at: _Optional[int] = ..., hardware_serial: _Optional[str] = ..., secret_tags: _Optional[_Iterable[str]] = ..., os_version: _Optional[str] = ...) -> None: ...

class NodeDetails(_message.Message):
    __slots__ = ("node", "host_details_json", "recent_enrollments", "suspected_clone", "client_certificate")
    NODE_FIELD_NUMBER: _ClassVar[int]
    HOST_DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    RECENT_ENROLLMENTS_FIELD_NUMBER: _ClassVar[int]
    SUSPECTED_CLONE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    host_details_json: str
    recent_enrollments: int
    suspected_clone: bool
    client_certificate: ClientCertificate
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., host_details_json: _Optional[str] = ..., recent_enrollments: _Optional[int] = ..., suspected_clone: _Optional[bool] = ..., client_certificate: _Optional[_Union[ClientCertificate, _Mapping]] = ...) -> None: ...

class WatchNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("kind", "node", "revision", "group", "seen")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[NodeEvent.Kind]
        UPSERT: _ClassVar[NodeEvent.Kind]
        REMOVE: _ClassVar[NodeEvent.Kind]
        SNAPSHOT_DONE: _ClassVar[NodeEvent.Kind]
        GROUP: _ClassVar[NodeEvent.Kind]
        SEEN: _ClassVar[NodeEvent.Kind]
    KIND_UNSPECIFIED: NodeEvent.Kind
    UPSERT: NodeEvent.Kind
    REMOVE: NodeEvent.Kind
    SNAPSHOT_DONE: NodeEvent.Kind
    GROUP: NodeEvent.Kind
    SEEN: NodeEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    kind: NodeEvent.Kind
    node: Node
    revision: int
    group: _containers.RepeatedCompositeFieldContainer[NodeEvent]
    seen: _containers.RepeatedCompositeFieldContainer[Checkin]
    def __init__(self, kind: _Optional[_Union[NodeEvent.Kind, str]] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., revision: _Optional[int] = ..., group: _Optional[_Iterable[_Union[NodeEvent, _Mapping]]] = ..., seen: _Optional[_Iterable[_Union[Checkin, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("status", "tag", "platform", "secret_name", "suspected_clones", "search")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SECRET_NAME_FIELD_NUMBER: _ClassVar[int]
    SUSPECTED_CLONES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    status: str
    tag: str
    platform: str
    secret_name: str
    suspected_clones: bool
    search: str
    def __init__(self, status: _Optional[str] = ..., tag: _Optional[str] = ..., platform: _Optional[str] = ..., secret_name: _Optional[str] = ..., suspected_clones: _Optional[bool] = ..., search: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class NodeRef(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class ResolveNodesRequest(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, refs: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class EnrollSecret(_message.Message):
    __slots__ = ("secret_id", "name", "tags", "group", "created_at", "expires_at", "max_enrollments", "enrollments", "last_used_at", "one_time", "requires_approval", "allows_reenrollment_after_revocation", "revoked_at", "state")
    SECRET_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ENROLLMENTS_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    ALLOWS_REENROLLMENT_AFTER_REVOCATION_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    secret_id: str
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    group: str
    created_at: int
    expires_at: int
    max_enrollments: int
    enrollments: int
    last_used_at: int
    one_time: bool
    requires_approval: bool
    allows_reenrollment_after_revocation: bool
    revoked_at: int
    state: str
    def __init__(self, secret_id: _Optional[str] = ..., name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., max_enrollments: _Optional[int] = ..., enrollments: _Optional[int] = ..., last_used_at: _Optional[int] = ..., one_time: _Optional[bool] = ..., requires_approval: _Optional[bool] = ..., allows_reenrollment_after_revocation: _Optional[bool] = ..., revoked_at: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class CreateSecretRequest(_message.Message):
    __slots__ = ("name", "tags", "group", "expires_at", "max_enrollments", "one_time", "requires_approval", "allows_reenrollment_after_revocation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_ENROLLMENTS_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    ALLOWS_REENROLLMENT_AFTER_REVOCATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    group: str
    expires_at: int
    max_enrollments: int
    one_time: bool
    requires_approval: bool
    allows_reenrollment_after_revocation: bool
    def __init__(self, name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., group: _Optional[str] = ..., expires_at: _Optional[int] = ..., max_enrollments: _Optional[int] = ..., one_time: _Optional[bool] = ..., requires_approval: _Optional[bool] = ..., allows_reenrollment_after_revocation: _Optional[bool] = ...) -> None: ...

class CreatedSecret(_message.Message):
    __slots__ = ("secret", "value")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    secret: EnrollSecret
    value: str
    def __init__(self, secret: _Optional[_Union[EnrollSecret, _Mapping]] = ..., value: _Optional[str] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ("include_inactive",)
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    def __init__(self, include_inactive: _Optional[bool] = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[EnrollSecret]
    def __init__(self, secrets: _Optional[_Iterable[_Union[EnrollSecret, _Mapping]]] = ...) -> None: ...

class SecretRef(_message.Message):
    __slots__ = ("secret",)
    SECRET_FIELD_NUMBER: _ClassVar[int]
    secret: str
    def __init__(self, secret: _Optional[str] = ...) -> None: ...

class RotateSecretRequest(_message.Message):
    __slots__ = ("secret", "grace_seconds")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    secret: str
    grace_seconds: int
    def __init__(self, secret: _Optional[str] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class AdminToken(_message.Message):
    __slots__ = ("name", "role", "created_at", "revoked_at", "found", "expires_at", "last_used_at", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    created_at: int
    revoked_at: int
    found: bool
    expires_at: int
    last_used_at: int
    state: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., created_at: _Optional[int] = ..., revoked_at: _Optional[int] = ..., found: _Optional[bool] = ..., expires_at: _Optional[int] = ..., last_used_at: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "role", "expires_in_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    expires_in_seconds: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., expires_in_seconds: _Optional[int] = ...) -> None: ...

class CreatedToken(_message.Message):
    __slots__ = ("token", "value")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    token: AdminToken
    value: str
    def __init__(self, token: _Optional[_Union[AdminToken, _Mapping]] = ..., value: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[AdminToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[AdminToken, _Mapping]]] = ...) -> None: ...

class TokenRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResolveTokenRequest(_message.Message):
    __slots__ = ("token_sha256",)
    TOKEN_SHA256_FIELD_NUMBER: _ClassVar[int]
    token_sha256: str
    def __init__(self, token_sha256: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("at_ms", "token_name", "role", "method", "outcome", "summary", "service")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    token_name: str
    role: str
    method: str
    outcome: str
    summary: str
    service: str
    def __init__(self, at_ms: _Optional[int] = ..., token_name: _Optional[str] = ..., role: _Optional[str] = ..., method: _Optional[str] = ..., outcome: _Optional[str] = ..., summary: _Optional[str] = ..., service: _Optional[str] = ...) -> None: ...

class RecordAuditResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since_ms", "token_name", "limit")
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since_ms: int
    token_name: str
    limit: int
    def __init__(self, since_ms: _Optional[int] = ..., token_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
