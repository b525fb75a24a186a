"""Admin API tokens and the audit log of admin calls, kept in the enroll service's database.

The enroll service is the token authority of the cluster (quarry/access/admin_auth.py): a
token's SHA-256 is stored with its name and role, never the token itself, along with
when it expires (0: never) and when it was last accepted. The audit log
holds one row per admin call on any service: who, what, when, and the outcome.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from protos.v1 import enroll_pb2
from quarry.access.admin_auth import (
    ADMIN,
    ROOT_TOKEN_NAME,
    Principal,
    hash_token,
    is_expired,
    new_token_value,
    root_token_from_env,
    write_private_file,
)
from quarry.runtime.settings import Settings
from quarry.state.database import StateDatabase, StateStore
from quarry.state.directory import admin_token_file
from quarry.state.migrations import Migration
from quarry.state.table_schema import INTEGER, SERIAL, TEXT, Column, Index, Table

log = logging.getLogger(__name__)

ADMIN_TOKENS = Table(
    "admin_tokens",
    (
        Column("name", TEXT),
        Column("role", TEXT),
        Column("token_sha256", TEXT, unique=True),
        Column("created_at", INTEGER),
        Column("revoked_at", INTEGER, default=0),
        # Expiry and last use came in version 2; existing tokens never expire.
        Column("expires_at", INTEGER, default=0, since=2),
        Column("last_used_at", INTEGER, default=0, since=2),
    ),
    primary_key=("name",),
)
ADMIN_AUDIT = Table(
    "admin_audit",
    (
        Column("id", SERIAL),
        Column("at_ms", INTEGER),
        Column("token_name", TEXT),
        Column("role", TEXT),
        Column("method", TEXT),
        Column("outcome", TEXT),
        Column("summary", TEXT),
        Column("service", TEXT),
    ),
    primary_key=("id",),
    indexes=(Index("admin_audit_at", ("at_ms",)),),
)
MIGRATIONS = (
    Migration(1, "admin tokens and audit log", tables=(ADMIN_TOKENS, ADMIN_AUDIT)),
    Migration(2, "admin token expiry and last use", tables=(ADMIN_TOKENS,)),
)

DEFAULT_AUDIT_LIMIT = 1000
# last_used_at is written at most this often per token, so a script calling in a loop
# does not turn every admin call into a database write.
LAST_USED_RESOLUTION_S = 60

ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"
_TOKEN_COLUMNS = "name, role, created_at, revoked_at, expires_at, last_used_at"


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: str
    created_at: int
    revoked_at: int
    expires_at: int = 0
    last_used_at: int = 0

    def state(self, now: float) -> str:
        if self.revoked_at:
            return REVOKED
        return EXPIRED if is_expired(self.expires_at, now) else ACTIVE

    def message(self, now: float) -> enroll_pb2.AdminToken:
        return enroll_pb2.AdminToken(
            name=self.name,
            role=self.role,
            created_at=self.created_at,
            revoked_at=self.revoked_at,
            expires_at=self.expires_at,
            last_used_at=self.last_used_at,
            state=self.state(now),
            found=True,
        )


class AdminTokenStore(StateStore):
    """The admin_tokens and admin_audit tables (in the enroll database, beside the nodes)."""

    def __init__(self, database: StateDatabase) -> None:
        super().__init__(database)

    def create(
        self, name: str, role: str, value: str, now: int, expires_at: int = 0
    ) -> TokenRecord | None:
        """A new token; None when an active or revoked one already has that name."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM admin_tokens WHERE name = ?", (name,)).fetchone():
                return None
            db.execute(
                "INSERT INTO admin_tokens (name, role, token_sha256, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, role, hash_token(value), now, expires_at),
            )
        return TokenRecord(name, role, now, 0, expires_at)

    def replace_value(self, name: str, role: str, value: str, now: int) -> None:
        """Set name's token to value (active again), creating it if needed: the root token."""
        with self._transaction() as db:
            db.execute("DELETE FROM admin_tokens WHERE name = ?", (name,))
            db.execute(
                "INSERT INTO admin_tokens (name, role, token_sha256, created_at)"
                " VALUES (?, ?, ?, ?)",
                (name, role, hash_token(value), now),
            )

    def tokens(self, include_revoked: bool) -> list[TokenRecord]:
        """Tokens by name: active and expired ones, and with include_revoked revoked ones."""
        where = "" if include_revoked else " WHERE revoked_at = 0"
        rows = self._db.execute(
            f"SELECT {_TOKEN_COLUMNS} FROM admin_tokens{where} ORDER BY name"
        ).fetchall()
        return [TokenRecord(*row) for row in rows]

    def revoke(self, name: str, now: int) -> TokenRecord | None:
        with self._transaction() as db:
            db.execute(
                "UPDATE admin_tokens SET revoked_at = ? WHERE name = ? AND revoked_at = 0",
                (now, name),
            )
            row = db.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM admin_tokens WHERE name = ?", (name,)
            ).fetchone()
        return TokenRecord(*row) if row else None

    def resolve(self, token_sha256: str, now: int) -> Principal | None:
        """Who holds an unrevoked token, expired ones included (the caller refuses those
        with their own message); notes the use of one still valid."""
        row = self._db.execute(
            "SELECT name, role, expires_at, last_used_at FROM admin_tokens"
            " WHERE token_sha256 = ? AND revoked_at = 0",
            (token_sha256,),
        ).fetchone()
        if row is None:
            return None
        name, role, expires_at, last_used_at = row
        if not is_expired(expires_at, now) and now - last_used_at >= LAST_USED_RESOLUTION_S:
            self._note_use(name, now)
        return Principal(name, role, expires_at)

    def _note_use(self, name: str, now: int) -> None:
        with self._transaction() as db:
            # The condition keeps replicas sharing the table to one write a minute too.
            db.execute(
                "UPDATE admin_tokens SET last_used_at = ? WHERE name = ? AND last_used_at <= ?",
                (now, name, now - LAST_USED_RESOLUTION_S),
            )

    def has(self, name: str) -> bool:
        found = self._db.execute("SELECT 1 FROM admin_tokens WHERE name = ?", (name,)).fetchone()
        return found is not None

    def record(self, entry: enroll_pb2.AuditEntry) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO admin_audit"
                " (at_ms, token_name, role, method, outcome, summary, service)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.at_ms,
                    entry.token_name,
                    entry.role,
                    entry.method,
                    entry.outcome,
                    entry.summary,
                    entry.service,
                ),
            )

    def audit(self, since_ms: int, token_name: str, limit: int) -> list[enroll_pb2.AuditEntry]:
        """The newest `limit` entries at or after since_ms, oldest first."""
        query = (
            "SELECT at_ms, token_name, role, method, outcome, summary, service FROM admin_audit"
            " WHERE at_ms >= ?"
        )
        params: list[object] = [since_ms]
        if token_name:
            query += " AND token_name = ?"
            params.append(token_name)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit or DEFAULT_AUDIT_LIMIT)
        rows = self._db.execute(query, params).fetchall()
        fields = ("at_ms", "token_name", "role", "method", "outcome", "summary", "service")
        return [enroll_pb2.AuditEntry(**dict(zip(fields, row, strict=True))) for row in rows[::-1]]


class LocalTokenAuthority:
    """The token authority inside the enroll service itself: the store, no round trip."""

    def __init__(self, store: AdminTokenStore) -> None:
        self._store = store

    async def resolve(self, token_sha256: str) -> Principal | None:
        return self._store.resolve(token_sha256, int(time.time()))

    async def record(self, entry: enroll_pb2.AuditEntry) -> None:
        self._store.record(entry)


def bootstrap_root_token(settings: Settings, store: AdminTokenStore) -> None:
    """Make sure an admin can get in: the root token, from QUARRY_ADMIN_TOKEN or a new file.

    QUARRY_ADMIN_TOKEN, when set, is (re)installed as root at each start, so changing
    that secret rotates root. Otherwise root is made once, on first start, and its value
    written to state_dir/admin_token (0600), where the CLI on this machine finds it.
    """
    now = int(time.time())
    from_env = root_token_from_env()
    if from_env:
        store.replace_value(ROOT_TOKEN_NAME, ADMIN, from_env, now)
        return
    path = admin_token_file(settings)
    value = new_token_value()
    if store.database.shared:
        # Replicas share the token table: only the first to start makes root, and only
        # it has the file (QUARRY_ADMIN_TOKEN from a Secret is the way to run replicas).
        if store.create(ROOT_TOKEN_NAME, ADMIN, value, now) is None:
            if not path.exists():
                log.warning("root admin token made by another replica; set QUARRY_ADMIN_TOKEN")
            return
    elif store.has(ROOT_TOKEN_NAME) and path.exists():
        return
    else:
        store.replace_value(ROOT_TOKEN_NAME, ADMIN, value, now)
    settings.path()  # the state directory, created on first use
    write_private_file(path, value)
    log.info("root admin token written to %s", path)
