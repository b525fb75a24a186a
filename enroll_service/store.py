"""Node records in SQLite: one row per machine, holding its current node key.

Re-enrollment of the same machine replaces the key in its row, so an old key stops
working the moment a new one is issued and a machine never appears twice. All SQL of
the service lives here, behind NodeStore, so PostgreSQL can replace it later.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quarry.sqlite_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_key TEXT NOT NULL UNIQUE,
    host_identifier TEXT NOT NULL,
    hardware_uuid TEXT NOT NULL,
    platform_type TEXT NOT NULL,
    platform TEXT NOT NULL,
    osquery_version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    host_details_json TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_by_machine ON nodes (host_identifier, hardware_uuid);
"""

NODE_COLUMNS = (
    "node_id, node_key, host_identifier, hardware_uuid, platform_type, platform,"
    " osquery_version, hostname, enrolled_at, last_seen_at, revoked, revision"
)


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


@dataclass(frozen=True)
class Enrollment:
    """What a successful enrollment produced; `replaced_key` is the re-enrolled node's old key."""

    node: NodeRecord
    replaced_key: str | None


@dataclass(frozen=True)
class NewNode:
    """The facts an enrollment request brings."""

    node_key: str
    host_identifier: str
    hardware_uuid: str
    platform_type: str
    platform: str
    osquery_version: str
    hostname: str
    host_details_json: str


class NodeStore(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)
        # Each change gets the next revision, so a watcher can order what it sees.
        latest = self._db.execute("SELECT COALESCE(MAX(revision), 0) FROM nodes").fetchone()
        self._revision: int = latest[0]

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def enroll(self, new: NewNode, now: int) -> Enrollment:
        """Issue new.node_key to this machine, re-using its record when it enrolled before."""
        with self._transaction() as db:
            previous = db.execute(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE host_identifier = ? AND hardware_uuid = ?"
                " ORDER BY enrolled_at DESC LIMIT 1",
                (new.host_identifier, new.hardware_uuid),
            ).fetchone()
            node_id = previous[0] if previous else str(uuid.uuid4())
            db.execute(
                "INSERT INTO nodes (node_id, node_key, host_identifier, hardware_uuid,"
                " platform_type, platform, osquery_version, hostname, host_details_json,"
                " enrolled_at, last_seen_at, revoked, revision)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET node_key = excluded.node_key,"
                " platform_type = excluded.platform_type, platform = excluded.platform,"
                " osquery_version = excluded.osquery_version, hostname = excluded.hostname,"
                " host_details_json = excluded.host_details_json,"
                " enrolled_at = excluded.enrolled_at, last_seen_at = excluded.last_seen_at,"
                " revoked = 0, revision = excluded.revision",
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
                    self._next_revision(),
                ),
            )
            node = self._select_one(db, "node_id = ?", node_id)
        assert node is not None
        replaced = previous[1] if previous and not previous[10] else None
        return Enrollment(node=node, replaced_key=replaced)

    def valid_nodes(self) -> Iterator[NodeRecord]:
        """Every node whose key is currently valid."""
        for row in self._db.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE revoked = 0"):
            yield _record(row)

    def all_nodes(self) -> list[NodeRecord]:
        rows = self._db.execute(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY enrolled_at")
        return [_record(row) for row in rows]

    def count_valid(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM nodes WHERE revoked = 0").fetchone()[0]

    def by_key(self, node_key: str) -> NodeRecord | None:
        return self._select_one(self._db, "node_key = ?", node_key)

    def record_checkins(self, seen: list[tuple[str, int]]) -> int:
        """Move last_seen_at forward (never back) for each (node_id, seen_at); returns matches."""
        with self._transaction() as db:
            matched = 0
            for node_id, seen_at in seen:
                cursor = db.execute(
                    "UPDATE nodes SET last_seen_at = MAX(last_seen_at, ?) WHERE node_id = ?",
                    (seen_at, node_id),
                )
                matched += cursor.rowcount
        return matched

    def revoke(self, node: str) -> NodeRecord | None:
        """Revoke the node named by its id, key or host identifier; None if there is none."""
        with self._transaction() as db:
            found = (
                self._select_one(db, "node_id = ?", node)
                or self._select_one(db, "node_key = ?", node)
                or self._select_one(
                    db, "host_identifier = ? ORDER BY revoked, enrolled_at DESC", node
                )
            )
            if found is None:
                return None
            db.execute(
                "UPDATE nodes SET revoked = 1, revision = ? WHERE node_id = ?",
                (self._next_revision(), found.node_id),
            )
            return self._select_one(db, "node_id = ?", found.node_id)

    @staticmethod
    def _select_one(db: sqlite3.Connection, where: str, value: str) -> NodeRecord | None:
        row = db.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE {where} LIMIT 1", (value,))
        found = row.fetchone()
        return _record(found) if found else None


def _record(row: tuple) -> NodeRecord:
    return NodeRecord(*row[:10], revoked=bool(row[10]), revision=row[11])
