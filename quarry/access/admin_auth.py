"""Who may call which admin RPC: roles, the method table, tokens, and the audit trail.

Admin calls (the CLI's) carry `authorization: Bearer <token>`. A token belongs to a
name and a role; roles are ordered, each allowed what the ones below it are:

    read-only  <  operator (may also run live queries)  <  admin  <  service

`service` is the other Quarry processes: they present the service token (QUARRY_SERVICE_TOKEN,
else the shared file state_dir/service_token) when they call each other. Their calls are
not admin actions and are not audited. The hot-path RPCs (Enroll, WatchNodes, ...) are
not in ADMIN_METHODS at all and stay unauthenticated here; authenticating services to
each other (mTLS) is separate work.

The enroll service is the token authority (tokens in its SQLite, enroll_service/
admin_tokens.py). The other services ask it (ResolveToken) and cache the answer for
RESOLVE_CACHE_S, so a revoked token stops working everywhere within that time. The answer
carries the token's expiry, checked on every call, so a cached answer never lets a token
outlive it. The root token given by QUARRY_ADMIN_TOKEN is recognized by every process on
its own, so admins are not locked out while the enroll service is down. Audit entries
reach the enroll service through a retry queue (quarry/access/audit_delivery.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter

from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.access.audit_delivery import AuditDelivery
from quarry.runtime.file_writes import write_atomically, write_once
from quarry.runtime.settings import Settings
from quarry.state.directory import admin_token_file, service_token_file

log = logging.getLogger(__name__)

READ_ONLY = "read-only"
OPERATOR = "operator"
ADMIN = "admin"
SERVICE = "service"
ROLES = (READ_ONLY, OPERATOR, ADMIN)  # what a token may be given
_RANK = {READ_ONLY: 1, OPERATOR: 2, ADMIN: 3, SERVICE: 4}

ROOT_TOKEN_NAME = "root"
ADMIN_TOKEN_ENV = "QUARRY_ADMIN_TOKEN"
SERVICE_TOKEN_ENV = "QUARRY_SERVICE_TOKEN"
RESOLVE_CACHE_S = 5.0
RESOLVE_TIMEOUT_S = 5.0

_ENROLL = "/quarry.v1.EnrollService/"
_CONFIG = "/quarry.v1.ConfigService/"
_DISTRIBUTED = "/quarry.v1.DistributedService/"

# Every admin RPC and the least role that may call it. A method missing here is a
# service-to-service or gateway call and is not checked.
ADMIN_METHODS: dict[str, str] = {
    _ENROLL + "ListNodes": READ_ONLY,
    _ENROLL + "ShowNode": READ_ONLY,
    _ENROLL + "ResolveNodes": READ_ONLY,
    _ENROLL + "RevokeNode": ADMIN,
    _ENROLL + "ApproveNode": ADMIN,
    _ENROLL + "RejectNode": ADMIN,
    _ENROLL + "CreateSecret": ADMIN,
    _ENROLL + "ListSecrets": READ_ONLY,
    _ENROLL + "RevokeSecret": ADMIN,
    _ENROLL + "RotateSecret": ADMIN,
    _ENROLL + "CreateToken": ADMIN,
    _ENROLL + "ListTokens": ADMIN,
    _ENROLL + "RevokeToken": ADMIN,
    _ENROLL + "ListAudit": ADMIN,
    _ENROLL + "ResolveToken": SERVICE,
    _ENROLL + "WhoAmI": READ_ONLY,
    _ENROLL + "RecordAudit": SERVICE,
    _CONFIG + "SetConfig": ADMIN,
    _CONFIG + "GetConfig": READ_ONLY,
    _CONFIG + "ApplyState": ADMIN,
    _CONFIG + "ExportState": READ_ONLY,
    _CONFIG + "ListVersions": READ_ONLY,
    _CONFIG + "Rollback": ADMIN,
    _CONFIG + "PromoteRollout": ADMIN,
    _CONFIG + "AbortRollout": ADMIN,
    _CONFIG + "NodeConfig": READ_ONLY,
    _CONFIG + "RolloutStatus": READ_ONLY,
    _CONFIG + "ListLabels": READ_ONLY,
    _DISTRIBUTED + "StartQuery": OPERATOR,
    _DISTRIBUTED + "CancelCampaign": OPERATOR,
    _DISTRIBUTED + "GetCampaign": READ_ONLY,
    _DISTRIBUTED + "ListCampaigns": READ_ONLY,
    _DISTRIBUTED + "WatchCampaign": READ_ONLY,
    _DISTRIBUTED + "ListCarves": READ_ONLY,
    _DISTRIBUTED + "GetCarve": READ_ONLY,
    # A carve is a whole file off a host (a key, a password database): only those who
    # may carve (StartQuery) may read one back (docs/security.md).
    _DISTRIBUTED + "DownloadCarve": OPERATOR,
    "/quarry.v1.LogStore/Query": READ_ONLY,
    "/quarry.v1.LogStore/StoreAlerts": SERVICE,
    "/quarry.v1.DetectionService/ListDetections": READ_ONLY,
    "/quarry.v1.DetectionService/TestDetection": OPERATOR,
}

# Request fields never written to the audit log, whatever the message.
_SECRET_FIELD_WORDS = ("secret", "token", "value", "password", "key")
SUMMARY_MAX_CHARS = 300
_FIELD_MAX_CHARS = 120
# A bare string this long with no spaces may be a node key: only its start is kept.
_OPAQUE_MIN_CHARS = 32


@dataclass(frozen=True)
class Principal:
    """Who made a call: a token's name and role, and when the token expires (Unix
    seconds, 0: never)."""

    name: str
    role: str
    expires_at: int = 0

    def expired(self, now: float) -> bool:
        return is_expired(self.expires_at, now)


# Who made the admin call being served: set by the server's admin interceptor
# (quarry/serving/grpc_runtime.py) around the method, for servicers whose answer depends on the
# role (`quarry sql` runs read-only below admin, docs/security.md).
_CALLER: ContextVar[Principal | None] = ContextVar("quarry_admin_caller", default=None)


def current_caller() -> Principal | None:
    """The principal of the admin call this task serves; None outside one."""
    return _CALLER.get()


@contextmanager
def serving_caller(principal: Principal) -> Iterator[None]:
    """principal is the current caller inside this block."""
    token = _CALLER.set(principal)
    try:
        yield
    finally:
        _CALLER.reset(token)


class Refused(Exception):
    """A call turned away: the gRPC code and a one-line reason.

    Raised by the admin gate before a call runs, and by a service's rules while it runs
    (every server answers those with the code: quarry/serving/grpc_runtime.py)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, principal: Principal | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.principal = principal


def new_token_value() -> str:
    return "qt_" + secrets.token_urlsafe(32)


def hash_token(value: str) -> str:
    # Tokens are 32 random bytes, so a plain SHA-256 is as strong as a slow hash.
    return hashlib.sha256(value.encode()).hexdigest()


def is_expired(expires_at: int, now: float) -> bool:
    """Whether a token with this expiry (Unix seconds, 0: never) is expired at now."""
    return expires_at > 0 and now >= expires_at


def role_allows(role: str, needed: str) -> bool:
    return _RANK.get(role, 0) >= _RANK[needed]


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of an `authorization: Bearer <token>` header; empty when there is none."""
    for key, value in metadata or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    return ""


def same_token(presented: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected token never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


# --- where tokens come from -----------------------------------------------------------


def cli_admin_token(settings: Settings) -> str:
    """The token the CLI presents: QUARRY_ADMIN_TOKEN, else state_dir/admin_token."""
    from_env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    try:
        return admin_token_file(settings).read_text().strip()
    except OSError:
        return ""


def root_token_from_env() -> str:
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip()


def service_token(settings: Settings) -> str:
    """The token the Quarry processes share: QUARRY_SERVICE_TOKEN, else a file they all read.

    The first process to need it writes the file; writing it aside and linking it into
    place means a process starting at the same moment reads a whole token or none.
    """
    from_env = os.environ.get(SERVICE_TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    path = service_token_file(settings)
    if not path.exists():
        write_once(path, (new_token_value() + "\n").encode())
    return path.read_text().strip()


def write_private_file(path: Path, text: str) -> None:
    """Write text to path (mode 0600), replacing it."""
    write_atomically(path, (text + "\n").encode(), 0o600)


# --- the audit summary ----------------------------------------------------------------


def request_summary(request: object) -> str:
    """The request's set fields as `name=value ...`, shortened, secret-bearing ones left out."""
    if not isinstance(request, Message):
        return ""
    parts = []
    for field, value in request.ListFields():
        if any(word in field.name for word in _SECRET_FIELD_WORDS):
            continue
        parts.append(f"{field.name}={_short(value)}")
    summary = " ".join(parts)
    return summary if len(summary) <= SUMMARY_MAX_CHARS else summary[: SUMMARY_MAX_CHARS - 1] + "…"


def _short(value: object) -> str:
    if isinstance(value, Message):
        return "{" + request_summary(value) + "}"
    if isinstance(value, str | bytes):
        text = value if isinstance(value, str) else f"<{len(value)} bytes>"
        if len(text) >= _OPAQUE_MIN_CHARS and " " not in text:
            return text[:8] + "…"
        return text if len(text) <= _FIELD_MAX_CHARS else text[: _FIELD_MAX_CHARS - 1] + "…"
    if isinstance(value, Iterable):
        return "[" + ",".join(_short(item) for item in value) + "]"
    return str(value)


# --- the authority: resolving tokens and keeping the audit log ------------------------


class TokenAuthority(Protocol):
    async def resolve(self, token_sha256: str) -> Principal | None: ...

    async def record(self, entry: enroll_pb2.AuditEntry) -> None: ...


class RemoteTokenAuthority:
    """The enroll service's tokens and audit log, asked over gRPC, answers cached briefly."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        # The channel (grpc_runtime.aio_channel) presents this process's service token.
        self._stub = enroll_pb2_grpc.EnrollServiceStub(channel)
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._audit = AuditDelivery(self._send_audit)

    async def resolve(self, token_sha256: str) -> Principal | None:
        cached = self._cache.get(token_sha256)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            reply = await self._stub.ResolveToken(
                enroll_pb2.ResolveTokenRequest(token_sha256=token_sha256),
                timeout=RESOLVE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot check the admin token: enroll service {exc.code().name}",
            ) from exc
        principal = Principal(reply.name, reply.role, reply.expires_at) if reply.found else None
        if len(self._cache) > 10_000:
            self._cache.clear()  # a flood of made-up tokens must not grow memory
        self._cache[token_sha256] = (time.monotonic() + RESOLVE_CACHE_S, principal)
        return principal

    async def record(self, entry: enroll_pb2.AuditEntry) -> None:
        await self._audit.deliver(entry)

    async def _send_audit(self, entry: enroll_pb2.AuditEntry) -> None:
        await self._stub.RecordAudit(entry, timeout=RESOLVE_TIMEOUT_S)


# Calls refused for lack of a valid token are audited up to this many a minute per
# process: enough to show someone probing, too few for anyone who can reach a gRPC port
# to flood the audit log (and push real entries out of a full delivery queue).
ANONYMOUS_AUDIT_PER_MINUTE = 60

ANONYMOUS_NOT_AUDITED = Counter(
    "quarry_admin_anonymous_refusals_not_audited_total",
    "Calls refused for lack of a valid admin token past the audit log's budget "
    f"({ANONYMOUS_AUDIT_PER_MINUTE} a minute per process): counted, not audited.",
)


class AnonymousAuditBudget:
    """How many anonymous refusals may still be audited in the current minute."""

    def __init__(self, per_minute: int = ANONYMOUS_AUDIT_PER_MINUTE) -> None:
        self._per_minute = per_minute
        self._minute_started = float("-inf")
        self._used = 0

    def allows(self, now: float) -> bool:
        if now - self._minute_started >= 60:
            if self._used > self._per_minute:
                log.warning(
                    "%d calls without a valid admin token in a minute; %d audited",
                    self._used,
                    self._per_minute,
                )
            self._minute_started, self._used = now, 0
        self._used += 1
        if self._used > self._per_minute:
            ANONYMOUS_NOT_AUDITED.inc()
            return False
        return True


class AdminGate:
    """Decides whether a call may run, and writes the audit entry of each admin call."""

    def __init__(
        self, authority: TokenAuthority, service_name: str, own_service_token: str
    ) -> None:
        self._authority = authority
        self._service_name = service_name
        self._service_token = own_service_token
        self._root_token = root_token_from_env()
        self._anonymous_audit = AnonymousAuditBudget()

    async def admit(self, method: str, token: str) -> Principal:
        """The caller of method, when its token's role is enough; else Refused."""
        needed = ADMIN_METHODS[method]
        principal = await self._principal(token)
        if principal is None:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "no valid admin token; the CLI sends QUARRY_ADMIN_TOKEN or "
                "state_dir/admin_token (create more with `quarry token create`)"
                if not token
                else "unknown or revoked admin token",
            )
        if principal.expired(time.time()):
            # Only the holder of the token's value gets here: an unknown token learns nothing.
            expired_at = datetime.fromtimestamp(principal.expires_at, UTC)
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"admin token {principal.name!r} expired at "
                f"{expired_at.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                principal,
            )
        if not role_allows(principal.role, needed):
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"token {principal.name!r} ({principal.role}) may not call "
                f"{method.rsplit('/', 1)[-1]}: it needs {needed}",
                principal,
            )
        return principal

    async def _principal(self, token: str) -> Principal | None:
        if not token:
            return None
        if same_token(token, self._service_token):
            return Principal(SERVICE, SERVICE)
        if same_token(token, self._root_token):
            return Principal(ROOT_TOKEN_NAME, ADMIN)
        return await self._authority.resolve(hash_token(token))

    async def record(
        self, method: str, principal: Principal | None, outcome: str, request: object
    ) -> None:
        if principal is not None and principal.role == SERVICE:
            return  # Quarry's own calls are not admin actions
        if principal is None and not self._anonymous_audit.allows(time.monotonic()):
            return
        entry = enroll_pb2.AuditEntry(
            at_ms=int(time.time() * 1000),
            token_name=principal.name if principal else "",
            role=principal.role if principal else "",
            method=method,
            outcome=outcome,
            summary=request_summary(request),
            service=self._service_name,
        )
        log.info("audit: %s by %s: %s", method, entry.token_name or "(no token)", outcome)
        await self._authority.record(entry)
