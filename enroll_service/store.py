"""Node records, enroll secrets and the enrollment history, in SQLite or PostgreSQL.

One row per machine (per identity) holds its current node key: re-enrollment replaces
the key in that row, so an old key stops working the moment a new one is issued and a
machine never appears twice. All SQL of the service lives here, behind NodeStore, in
SQL both backends run (quarry/state/database.py); writers are serialized, so several
replicas sharing PostgreSQL never lose an update.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from enroll_service import admin_tokens
from enroll_service.enroll_secrets import (
    KIND_CREATED,
    SecretPolicy,
    SecretRecord,
)
from enroll_service.host_details import parse_host_details
from enroll_service.node_identity import EnrollmentHistory
from osquery_config.targeting import platform_selected
from quarry.state.database import (
    POSTGRESQL,
    SQLITE,
    Queryable,
    StateDatabase,
    StateStore,
    Transaction,
)
from quarry.state.migrations import Migration
from quarry.state.service_database import SchemaComponent, ServiceSchema
from quarry.state.table_schema import INTEGER, TEXT, Column, Index, Table

NODES = Table(
    "nodes",
    (
        Column("node_id", TEXT),
        Column("node_key", TEXT, unique=True),
        Column("host_identifier", TEXT),
        Column("hardware_uuid", TEXT),
        Column("platform_type", TEXT),
        Column("platform", TEXT),
        Column("osquery_version", TEXT),
        Column("hostname", TEXT),
        Column("host_details_json", TEXT),
        Column("enrolled_at", INTEGER),
        Column("last_seen_at", INTEGER),
        Column("revoked", INTEGER, default=0),
        Column("revision", INTEGER),
        # Added before migrations were versioned (ADDED_NODE_COLUMNS).
        Column("identity", TEXT, default=""),
        Column("hardware_serial", TEXT, default=""),
        Column("tags_json", TEXT, default="[]"),
        Column("node_group", TEXT, default=""),
        Column("secret_id", TEXT, default=""),
        Column("secret_name", TEXT, default=""),
        Column("pending", INTEGER, default=0),
        Column("approved_at", INTEGER, default=0),
        Column("first_enrolled_at", INTEGER, default=0),
        Column("client_certificate_json", TEXT, default=""),
        Column("os_version", TEXT, default="", since=4),
    ),
    primary_key=("node_id",),
    indexes=(
        Index("nodes_by_identity", ("identity", "enrolled_at"), since=2),
        Index("nodes_by_revision", ("revision",), since=2),
    ),
)
ENROLL_SECRETS = Table(
    "enroll_secrets",
    (
        Column("secret_id", TEXT),
        Column("kind", TEXT),
        Column("name", TEXT),
        Column("value_sha256", TEXT, nullable=True, unique=True),
        Column("tags_json", TEXT),
        Column("secret_group", TEXT),
        Column("created_at", INTEGER),
        Column("expires_at", INTEGER),
        Column("max_enrollments", INTEGER),
        Column("enrollments", INTEGER, default=0),
        Column("last_used_at", INTEGER, default=0),
        Column("one_time", INTEGER),
        Column("requires_approval", INTEGER),
        Column("allows_reenrollment_after_revocation", INTEGER),
        Column("revoked_at", INTEGER, default=0),
    ),
    primary_key=("secret_id",),
    indexes=(Index("enroll_secrets_by_name", ("name",)),),
    rowid=True,  # the secrets' creation order
)
# One row per successful enrollment, kept for the clone window: cooldown and clone report.
ENROLLMENTS = Table(
    "enrollments",
    (
        Column("identity", TEXT),
        Column("node_id", TEXT),
        Column("enrolled_at", INTEGER),
        # none (first enrollment, or after a revocation), used or unused: the replaced key.
        Column("replaced_key", TEXT),
    ),
    indexes=(
        Index("enrollments_by_identity", ("identity", "enrolled_at")),
        Index("enrollments_by_time", ("enrolled_at",)),
    ),
)

# The machines (identities) that enrolled with each secret: a quota counts machines, so a
# machine re-enrolling with the secret it used before uses none of it (docs/enrollment.md).
SECRET_MACHINES = Table(
    "secret_machines",
    (
        Column("secret_id", TEXT, since=3),
        Column("identity", TEXT, since=3),
        Column("first_enrolled_at", INTEGER, since=3),
    ),
    primary_key=("secret_id", "identity"),
)
# Machines already enrolled with a secret before machines were counted: their
# re-enrollments must not count either. Counts already made stay (never lowered, so a
# one-time secret used once stays used).
BACKFILL_SECRET_MACHINES = """
INSERT INTO secret_machines (secret_id, identity, first_enrolled_at)
SELECT secret_id, identity, MIN(first_enrolled_at) FROM nodes
WHERE secret_id <> '' AND identity <> '' GROUP BY secret_id, identity
"""

# Columns added to `nodes` before migrations were versioned: an SQLite file made by an
# older Quarry gets them by ALTER TABLE when it is migrated.
ADDED_NODE_COLUMNS = (
    "identity",
    "hardware_serial",
    "tags_json",
    "node_group",
    "secret_id",
    "secret_name",
    "pending",
    "approved_at",
    "first_enrolled_at",
    "client_certificate_json",
)
# What older rows mean in the new columns: they enrolled with the shared secret, were
# active at once, and were told apart by hardware UUID, else host identifier.
BACKFILL_OLD_NODES = """
UPDATE nodes SET
    identity = CASE hardware_uuid WHEN '' THEN host_identifier ELSE hardware_uuid END,
    secret_name = 'default',
    approved_at = enrolled_at,
    first_enrolled_at = enrolled_at
WHERE identity = ''
"""


def _upgrade_unversioned_nodes(tx: Transaction, dialect: str) -> None:
    """An SQLite file from before ADDED_NODE_COLUMNS gets them, and its rows their meaning."""
    if dialect != SQLITE:
        return
    existing = {row[1] for row in tx.execute("PRAGMA table_info(nodes)")}
    missing = [name for name in ADDED_NODE_COLUMNS if name not in existing]
    for name in missing:
        tx.execute(NODES.add_column(name, SQLITE))
    if missing:
        tx.execute(BACKFILL_OLD_NODES)


def _backfill_os_versions(tx: Transaction, dialect: str) -> None:
    """Nodes enrolled before the column existed: their OS version from their host details."""
    rows = tx.execute("SELECT node_id, host_details_json FROM nodes").fetchall()
    versions = [(parse_host_details(details or "")[1].os_version, node) for node, details in rows]
    tx.executemany(
        "UPDATE nodes SET os_version = ? WHERE node_id = ?", [v for v in versions if v[0]]
    )


MIGRATIONS = (
    Migration(
        1,
        "nodes, enroll secrets, enrollments",
        tables=(NODES, ENROLL_SECRETS, ENROLLMENTS),
        python=_upgrade_unversioned_nodes,
    ),
    Migration(2, "nodes by identity and by revision", tables=(NODES,)),
    Migration(
        3,
        "the machines enrolled with each secret",
        tables=(SECRET_MACHINES,),
        sql=BACKFILL_SECRET_MACHINES,
    ),
    Migration(
        4,
        "each node's OS version, from the host details it enrolled with",
        tables=(NODES,),
        python=_backfill_os_versions,
    ),
)
# The enroll database: the nodes, and the admin tokens beside them.
SERVICE_SCHEMA = ServiceSchema(
    "enroll",
    (
        SchemaComponent("enroll.nodes", MIGRATIONS),
        SchemaComponent("enroll.admin_tokens", admin_tokens.MIGRATIONS),
    ),
)

# ListNodes tag filter: the tag is one of the node's tags_json array.
TAG_CONDITIONS = {
    SQLITE: "EXISTS (SELECT 1 FROM json_each(nodes.tags_json) WHERE value = ?)",
    POSTGRESQL: "EXISTS (SELECT 1 FROM jsonb_array_elements_text(nodes.tags_json::jsonb) AS t"
    " WHERE t = ?)",
}

NODE_COLUMNS = (
    "node_id, node_key, host_identifier, hardware_uuid, platform_type, platform,"
    " osquery_version, hostname, enrolled_at, last_seen_at, revoked, revision,"
    " identity, hardware_serial, tags_json, node_group, secret_name, pending, approved_at,"
    " first_enrolled_at, os_version"
)
SECRET_COLUMNS = (
    "secret_id, kind, name, tags_json, secret_group, created_at, expires_at, max_enrollments,"
    " enrollments, last_used_at, one_time, requires_approval,"
    " allows_reenrollment_after_revocation, revoked_at"
)

# ListNodes search: a substring of the hostname, host identifier or node id.
SEARCH_CONDITION = (
    "(LOWER(hostname) LIKE ? ESCAPE '\\' OR LOWER(host_identifier) LIKE ? ESCAPE '\\'"
    " OR LOWER(node_id) LIKE ? ESCAPE '\\')"
)

# ListNodes status filter -> SQL condition.
STATUS_CONDITIONS = {
    "active": "revoked = 0 AND pending = 0",
    "pending": "revoked = 0 AND pending = 1",
    "revoked": "revoked = 1",
}


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    node_key: str
    host_identifier: str
    hardware_uuid: str
    platform_type: str
    platform: str
    osquery_version: str
    hostname: str
    enrolled_at: int
    last_seen_at: int
    revoked: bool
    revision: int
    identity: str
    hardware_serial: str
    tags: tuple[str, ...]
    group: str
    secret_name: str
    pending: bool
    approved: bool
    first_enrolled_at: int
    os_version: str = ""


@dataclass(frozen=True)
class NewNode:
    """The facts an enrollment request brings, and what the service decided about it."""

    node_key: str
    identity: str
    host_identifier: str
    hardware_uuid: str
    hardware_serial: str
    platform_type: str
    platform: str
    osquery_version: str
    hostname: str
    host_details_json: str
    client_certificate_json: str
    pending: bool
    os_version: str = ""


@dataclass(frozen=True)
class Enrollment:
    """What a successful enrollment produced; `replaced_key` is the re-enrolled node's old key."""

    node: NodeRecord
    replaced_key: str | None
    # Whether the node's key was not valid before (new node, or a revoked one back).
    newly_valid: bool


@dataclass(frozen=True)
class NodeFilter:
    status: str = ""
    tag: str = ""
    platform: str = ""
    secret_name: str = ""
    search: str = ""


class NodeStore(StateStore):
    def __init__(self, database: StateDatabase) -> None:
        super().__init__(database)
        # Counted here and by recount_valid (other replicas enroll too), kept current by
        # this replica's own changes in between: no COUNT per enrollment.
        self.valid_count = 0
        self.recount_valid()

    def recount_valid(self) -> int:
        counted = self._db.execute("SELECT COUNT(*) FROM nodes WHERE revoked = 0").fetchone()
        self.valid_count = counted[0]
        return self.valid_count

    @staticmethod
    def _next_revision(db: Transaction) -> int:
        """Each change gets the next revision, so a watcher can order what it sees; read
        inside the (serialized) write transaction, so replicas never hand out one twice."""
        return db.execute("SELECT COALESCE(MAX(revision), 0) + 1 FROM nodes").fetchone()[0]

    # Enroll secrets

    def create_secret(
        self, policy: SecretPolicy, kind: str, value_sha256: str | None, now: int
    ) -> SecretRecord:
        with self._transaction() as db:
            return self._insert_secret(db, policy, kind, value_sha256, now)

    def _insert_secret(
        self,
        db: Transaction,
        policy: SecretPolicy,
        kind: str,
        value_sha256: str | None,
        now: int,
    ) -> SecretRecord:
        secret_id = str(uuid.uuid4())
        db.execute(
            "INSERT INTO enroll_secrets (secret_id, kind, name, value_sha256, tags_json,"
            " secret_group, created_at, expires_at, max_enrollments, one_time,"
            " requires_approval, allows_reenrollment_after_revocation)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                secret_id,
                kind,
                policy.name,
                value_sha256,
                json.dumps(list(policy.tags)),
                policy.group,
                now,
                policy.expires_at,
                policy.max_enrollments,
                policy.one_time,
                policy.requires_approval,
                policy.allows_reenrollment_after_revocation,
            ),
        )
        found = self._secret_where(db, "secret_id = ?", secret_id)
        assert found
        return found[0]

    def secret_by_hash(self, value_sha256: str) -> SecretRecord | None:
        """A secret an admin created, by the SHA-256 of its value."""
        found = self._secret_where(
            self._db, "value_sha256 = ? AND kind = ?", value_sha256, KIND_CREATED
        )
        return found[0] if found else None

    def builtin_secret(
        self, kind: str, name: str, value_sha256: str | None, now: int
    ) -> SecretRecord:
        """The built-in secret of this kind, created on first use, its hash kept current."""
        # Every enrollment with the shared secret asks: a read when nothing changed, so
        # a storm of them takes no write lock here.
        unchanged = "kind = ? AND COALESCE(value_sha256, '') = COALESCE(?, '')"
        current = self._secret_where(self._db, unchanged, kind, value_sha256)
        if current:
            return current[0]
        with self._transaction() as db:
            found = self._secret_where(db, "kind = ?", kind)
            if not found:
                return self._insert_secret(db, SecretPolicy(name=name), kind, value_sha256, now)
            db.execute(
                "UPDATE enroll_secrets SET value_sha256 = ? WHERE secret_id = ?"
                " AND COALESCE(value_sha256, '') <> COALESCE(?, '')",
                (value_sha256, found[0].secret_id, value_sha256),
            )
            return found[0]

    def secrets(self) -> list[SecretRecord]:
        return self._secret_where(self._db, "1 = 1")

    def secrets_by_ref(self, ref: str) -> list[SecretRecord]:
        """The secret with this id, else every secret with this name (newest last)."""
        by_id = self._secret_where(self._db, "secret_id = ?", ref)
        return by_id or self._secret_where(self._db, "name = ?", ref)

    def revoke_secrets(self, secret_ids: list[str], now: int) -> list[SecretRecord]:
        """Revoke each (an already revoked one keeps its revocation time)."""
        with self._transaction() as db:
            for secret_id in secret_ids:
                db.execute(
                    "UPDATE enroll_secrets SET revoked_at = ? WHERE secret_id = ?"
                    " AND revoked_at = 0",
                    (now, secret_id),
                )
        return [self._secret_where(self._db, "secret_id = ?", i)[0] for i in secret_ids]

    def rotate_secret(
        self,
        old_ids: list[str],
        policy: SecretPolicy,
        value_sha256: str,
        expire_old_at: int,
        now: int,
    ) -> SecretRecord:
        """A new secret with `policy`; the old ones expire at expire_old_at (or before)."""
        with self._transaction() as db:
            for secret_id in old_ids:
                db.execute(
                    "UPDATE enroll_secrets SET expires_at = ? WHERE secret_id = ?"
                    " AND (expires_at = 0 OR expires_at > ?)",
                    (expire_old_at, secret_id, expire_old_at),
                )
            return self._insert_secret(db, policy, KIND_CREATED, value_sha256, now)

    @staticmethod
    def _secret_where(db: Queryable, where: str, *values: object) -> list[SecretRecord]:
        rows = db.execute(
            f"SELECT {SECRET_COLUMNS} FROM enroll_secrets WHERE {where} ORDER BY created_at, rowid",
            values,
        )
        return [_secret_record(row) for row in rows]

    # Enrollment

    def node_by_identity(self, identity: str) -> NodeRecord | None:
        return self._select_one(self._db, "identity = ? ORDER BY enrolled_at DESC", identity)

    def enroll(self, new: NewNode, secret: SecretRecord, now: int) -> Enrollment | None:
        """Issue new.node_key to this identity, re-using its record when it enrolled before.

        None (and nothing changed) when the secret can no longer be used: another
        enrollment used up its quota, or it was revoked or expired, since it was checked.
        """
        try:
            with self._transaction() as db:
                if not self._count_use_of_secret(db, secret.secret_id, new.identity, now):
                    raise _SecretUsedUp
                previous = self._select_one(
                    db, "identity = ? ORDER BY enrolled_at DESC", new.identity
                )
                node_id = previous.node_id if previous else str(uuid.uuid4())
                self._upsert_node(db, node_id, new, secret, now)
                db.execute(
                    "INSERT INTO enrollments (identity, node_id, enrolled_at, replaced_key)"
                    " VALUES (?, ?, ?, ?)",
                    (new.identity, node_id, now, _replaced_key_use(previous)),
                )
                node = self._select_one(db, "node_id = ?", node_id)
        except _SecretUsedUp:
            return None
        assert node is not None
        still_valid = previous is not None and not previous.revoked
        if not still_valid:
            self.valid_count += 1
        return Enrollment(
            node=node,
            replaced_key=previous.node_key if still_valid else None,
            newly_valid=not still_valid,
        )

    def knows_machine(self, secret_id: str, identity: str) -> bool:
        """Whether this machine enrolled with this secret before (it counts once)."""
        return self._machine_known(self._db, secret_id, identity)

    @staticmethod
    def _machine_known(db: Queryable, secret_id: str, identity: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM secret_machines WHERE secret_id = ? AND identity = ?",
            (secret_id, identity),
        ).fetchone()
        return row is not None

    def _count_use_of_secret(
        self, db: Transaction, secret_id: str, identity: str, now: int
    ) -> bool:
        """The secret's use by this machine, if it is still usable; False if not.

        A machine the secret already counted re-enrolls within its quota (or one-time
        use); a new machine takes one more of it.
        """
        usable = "secret_id = ? AND revoked_at = 0 AND (expires_at = 0 OR expires_at > ?)"
        if self._machine_known(db, secret_id, identity):
            cursor = db.execute(
                f"UPDATE enroll_secrets SET last_used_at = ? WHERE {usable}",
                (now, secret_id, now),
            )
            return cursor.rowcount == 1
        cursor = db.execute(
            "UPDATE enroll_secrets SET enrollments = enrollments + 1, last_used_at = ?"
            f" WHERE {usable}"
            " AND (max_enrollments = 0 OR enrollments < max_enrollments)"
            " AND (one_time = 0 OR enrollments = 0)",
            (now, secret_id, now),
        )
        if cursor.rowcount != 1:
            return False
        db.execute(
            "INSERT INTO secret_machines (secret_id, identity, first_enrolled_at) VALUES (?, ?, ?)",
            (secret_id, identity, now),
        )
        return True

    def _upsert_node(
        self, db: Transaction, node_id: str, new: NewNode, secret: SecretRecord, now: int
    ) -> None:
        db.execute(
            "INSERT INTO nodes (node_id, node_key, host_identifier, hardware_uuid,"
            " platform_type, platform, osquery_version, hostname, host_details_json,"
            " enrolled_at, last_seen_at, revoked, revision, identity, hardware_serial,"
            " tags_json, node_group, secret_id, secret_name, pending, approved_at,"
            " first_enrolled_at, client_certificate_json, os_version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (node_id) DO UPDATE SET node_key = excluded.node_key,"
            " host_identifier = excluded.host_identifier,"
            " hardware_uuid = excluded.hardware_uuid,"
            " platform_type = excluded.platform_type, platform = excluded.platform,"
            " osquery_version = excluded.osquery_version, hostname = excluded.hostname,"
            " host_details_json = excluded.host_details_json,"
            " enrolled_at = excluded.enrolled_at, last_seen_at = excluded.last_seen_at,"
            " revoked = 0, revision = excluded.revision,"
            " hardware_serial = excluded.hardware_serial, tags_json = excluded.tags_json,"
            " node_group = excluded.node_group, secret_id = excluded.secret_id,"
            " secret_name = excluded.secret_name, pending = excluded.pending,"
            " approved_at = CASE WHEN nodes.approved_at > 0 THEN nodes.approved_at"
            " ELSE excluded.approved_at END,"
            " client_certificate_json = excluded.client_certificate_json,"
            " os_version = excluded.os_version",
            (
                node_id,
                new.node_key,
                new.host_identifier,
                new.hardware_uuid,
                new.platform_type,
                new.platform,
                new.osquery_version,
                new.hostname,
                new.host_details_json,
                now,
                now,
                self._next_revision(db),
                new.identity,
                new.hardware_serial,
                json.dumps(list(secret.policy.tags)),
                secret.policy.group,
                secret.secret_id,
                secret.name,
                new.pending,
                0 if new.pending else now,
                now,
                new.client_certificate_json,
                new.os_version,
            ),
        )

    def enrollment_history(self, identity: str, since: int) -> EnrollmentHistory:
        """This identity's enrollments after `since`."""
        row = self._db.execute(
            f"SELECT {HISTORY_AGGREGATES} FROM enrollments WHERE identity = ? AND enrolled_at > ?",
            (identity, since),
        ).fetchone()
        return _history(row)

    def enrollment_histories(self, since: int) -> dict[str, EnrollmentHistory]:
        """Every identity that enrolled after `since`, with its history."""
        rows = self._db.execute(
            f"SELECT identity, {HISTORY_AGGREGATES} FROM enrollments WHERE enrolled_at > ?"
            " GROUP BY identity",
            (since,),
        )
        return {row[0]: _history(row[1:]) for row in rows}

    def forget_enrollments_before(self, before: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM enrollments WHERE enrolled_at <= ?", (before,))

    # Nodes

    def valid_nodes(self) -> Iterator[NodeRecord]:
        """Every node whose key is currently valid (pending ones included)."""
        for row in self._db.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE revoked = 0"):
            yield _node_record(row)

    def list_nodes(self, node_filter: NodeFilter) -> list[NodeRecord]:
        conditions, values = ["1 = 1"], []
        if node_filter.status:
            conditions.append(STATUS_CONDITIONS[node_filter.status])
        if node_filter.tag:
            conditions.append(TAG_CONDITIONS[self.database.dialect])
            values.append(node_filter.tag)
        if node_filter.secret_name:
            conditions.append("secret_name = ?")
            values.append(node_filter.secret_name)
        if node_filter.search:
            conditions.append(SEARCH_CONDITION)
            values += [_like_pattern(node_filter.search)] * 3
        rows = self._db.execute(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE {' AND '.join(conditions)}"
            " ORDER BY first_enrolled_at, node_id",
            values,
        )
        records = [_node_record(row) for row in rows]
        if node_filter.platform:
            # A family (linux) or an exact name (ubuntu): decided by the shared rule, not SQL.
            records = [r for r in records if platform_selected(node_filter.platform, r.platform)]
        return records

    def by_key(self, node_key: str) -> NodeRecord | None:
        return self._select_one(self._db, "node_key = ?", node_key)

    def named(self, ref: str) -> list[NodeRecord]:
        """The nodes `ref` may mean: the one with this id or key, else every node with this
        host identifier or hostname (case-insensitive), valid ones first, then newest."""
        exact = self._select_one(self._db, "node_id = ?", ref) or self.by_key(ref)
        if exact is not None:
            return [exact]
        rows = self._db.execute(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE host_identifier = ? OR LOWER(hostname) = ?"
            " ORDER BY revoked, enrolled_at DESC, node_id",
            (ref, ref.lower()),
        )
        return [_node_record(row) for row in rows]

    def host_details(self, node_id: str) -> tuple[str, str]:
        """The node's host_details JSON and its client certificate JSON ('' when none)."""
        row = self._db.execute(
            "SELECT host_details_json, client_certificate_json FROM nodes WHERE node_id = ?",
            (node_id,),
        ).fetchone()
        return (row[0], row[1]) if row else ("", "")

    def record_checkins(self, seen: list[tuple[str, int]]) -> int:
        """Move last_seen_at forward (never back) for each (node_id, seen_at); returns matches."""
        with self._transaction() as db:
            return db.executemany(
                "UPDATE nodes SET last_seen_at = CASE WHEN last_seen_at > ? THEN last_seen_at"
                " ELSE ? END WHERE node_id = ?",
                [(seen_at, seen_at, node_id) for node_id, seen_at in seen],
            )

    def revoke(self, node_id: str) -> NodeRecord:
        """Revoke the node (revoking a revoked node changes nothing but its revision)."""
        with self._transaction() as db:
            before = self._select_one(db, "node_id = ?", node_id)
            db.execute(
                "UPDATE nodes SET revoked = 1, pending = 0, revision = ? WHERE node_id = ?",
                (self._next_revision(db), node_id),
            )
            after = self._select_one(db, "node_id = ?", node_id)
        assert before is not None and after is not None
        if not before.revoked:
            self.valid_count -= 1
        return after

    def approve(self, node_id: str, now: int) -> NodeRecord:
        with self._transaction() as db:
            db.execute(
                "UPDATE nodes SET pending = 0, approved_at = ?, revision = ? WHERE node_id = ?",
                (now, self._next_revision(db), node_id),
            )
            approved = self._select_one(db, "node_id = ?", node_id)
        assert approved is not None
        return approved

    @staticmethod
    def _select_one(db: Queryable, where: str, value: str) -> NodeRecord | None:
        row = db.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE {where} LIMIT 1", (value,))
        found = row.fetchone()
        return _node_record(found) if found else None


def _like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its own % and _ taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _SecretUsedUp(Exception):
    """Rolls back an enrollment whose secret was used up or revoked since it was checked."""


HISTORY_AGGREGATES = (
    "COUNT(*), COALESCE(SUM(CASE WHEN replaced_key = 'used' THEN 1 ELSE 0 END), 0),"
    " COALESCE(SUM(CASE WHEN replaced_key = 'unused' THEN 1 ELSE 0 END), 0),"
    " COALESCE(MAX(enrolled_at), 0)"
)


def _history(row: tuple) -> EnrollmentHistory:
    # int(): PostgreSQL sums come back as Decimal.
    return EnrollmentHistory(
        count=int(row[0]),
        replaced_used=int(row[1]),
        replaced_unused=int(row[2]),
        last_enrolled_at=int(row[3]),
    )


def _replaced_key_use(previous: NodeRecord | None) -> str:
    """Whether the key a re-enrollment replaces had been used since it was issued."""
    if previous is None or previous.revoked:
        return "none"
    return "used" if previous.last_seen_at > previous.enrolled_at else "unused"


def _node_record(row: tuple) -> NodeRecord:
    return NodeRecord(
        *row[:10],
        revoked=bool(row[10]),
        revision=row[11],
        identity=row[12],
        hardware_serial=row[13],
        tags=tuple(json.loads(row[14])),
        group=row[15],
        secret_name=row[16],
        pending=bool(row[17]),
        approved=row[18] > 0,
        first_enrolled_at=row[19],
        os_version=row[20],
    )


def _secret_record(row: tuple) -> SecretRecord:
    return SecretRecord(
        secret_id=row[0],
        kind=row[1],
        policy=SecretPolicy(
            name=row[2],
            tags=tuple(json.loads(row[3])),
            group=row[4],
            expires_at=row[6],
            max_enrollments=row[7],
            one_time=bool(row[10]),
            requires_approval=bool(row[11]),
            allows_reenrollment_after_revocation=bool(row[12]),
        ),
        created_at=row[5],
        enrollments=row[8],
        last_used_at=row[9],
        revoked_at=row[13],
    )
