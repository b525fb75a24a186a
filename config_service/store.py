"""Versions of the managed state, the rollout, label memberships and config fetches.

The live version is a pointer, not simply the newest row: a staged rollout stores its
candidate as a version that is not live yet, and an aborted candidate stays in the
history. All SQL of the service lives here, behind ConfigStore, in SQL that SQLite and
PostgreSQL both run (quarry/state/database.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from osquery_config.state import DEFAULT_STATE, State
from quarry.state.database import SQLITE, Queryable, StateDatabase, StateStore, Transaction
from quarry.state.migrations import Migration
from quarry.state.service_database import SchemaComponent, ServiceSchema
from quarry.state.table_schema import INTEGER, TEXT, Column, Table

CONFIG_VERSIONS = Table(
    "config_versions",
    (
        Column("version", INTEGER),
        Column("config_json", TEXT),
        Column("author", TEXT),
        Column("created_at", INTEGER),
        Column("sha256", TEXT),
        # Added before migrations were versioned (ADDED_VERSION_COLUMNS).
        Column("state_json", TEXT, default=""),
        Column("comment", TEXT, default=""),
    ),
    primary_key=("version",),
)
# Tables of one row (id 1).
LIVE_VERSION = Table(
    "live_version",
    (Column("id", INTEGER, check="id = 1"), Column("version", INTEGER)),
    primary_key=("id",),
)
ROLLOUT = Table(
    "rollout",
    (
        Column("id", INTEGER, check="id = 1"),
        Column("candidate_version", INTEGER),
        Column("percent", INTEGER),
        Column("node_ids_json", TEXT),
        Column("started_at", INTEGER),
        Column("author", TEXT),
    ),
    primary_key=("id",),
)
LABEL_MEMBERS = Table(
    "label_members",
    (Column("label", TEXT), Column("node_id", TEXT)),
    primary_key=("label", "node_id"),
)
CONFIG_FETCHES = Table(
    "config_fetches",
    (
        Column("node_id", TEXT),
        Column("sha1", TEXT),
        Column("version", INTEGER),
        Column("fetched_at", INTEGER),
    ),
    primary_key=("node_id",),
)
# Columns added to config_versions when it held plain osquery configs (before states).
ADDED_VERSION_COLUMNS = ("state_json", "comment")
VERSION_COLUMNS = "version, state_json, author, created_at, sha256, comment"


def _upgrade_plain_configs(tx: Transaction, dialect: str) -> None:
    """Versions stored as one plain osquery config become single-block states, so
    history, rollback and the live config keep working after an upgrade."""
    if dialect != SQLITE:
        return  # PostgreSQL support came after states: nothing older to upgrade
    columns = {row[1] for row in tx.execute("PRAGMA table_info(config_versions)")}
    for name in ADDED_VERSION_COLUMNS:
        if name not in columns:
            tx.execute(CONFIG_VERSIONS.add_column(name, SQLITE))
    old_rows = tx.execute(
        "SELECT version, config_json FROM config_versions WHERE state_json = ''"
    ).fetchall()
    for version, config_json in old_rows:
        state_json = State.single_block(json.loads(config_json)).to_json()
        tx.execute(
            "UPDATE config_versions SET state_json = ?, sha256 = ? WHERE version = ?",
            (state_json, sha256_hex(state_json), version),
        )
    has_pointer = tx.execute("SELECT 1 FROM live_version").fetchone()
    newest = tx.execute("SELECT MAX(version) FROM config_versions").fetchone()[0]
    if not has_pointer and newest is not None:
        tx.execute("INSERT INTO live_version (id, version) VALUES (1, ?)", (newest,))


MIGRATIONS = (
    Migration(
        1,
        "state versions, live pointer, rollout, labels, fetches",
        tables=(CONFIG_VERSIONS, LIVE_VERSION, ROLLOUT, LABEL_MEMBERS, CONFIG_FETCHES),
        python=_upgrade_plain_configs,
    ),
)
SERVICE_SCHEMA = ServiceSchema("config", (SchemaComponent("config", MIGRATIONS),))


class RolloutInProgress(Exception):
    """A state cannot go live or start a rollout while another rollout is in progress."""


@dataclass(frozen=True)
class StateVersion:
    version: int
    state_json: str
    author: str
    created_at: int
    sha256: str
    comment: str

    @property
    def state(self) -> State:
        return State.from_json(self.state_json)


@dataclass(frozen=True)
class Rollout:
    candidate: StateVersion
    percent: int
    node_ids: tuple[str, ...]
    started_at: int
    author: str

    @property
    def candidate_version(self) -> int:
        return self.candidate.version


@dataclass(frozen=True)
class ConfigFetch:
    node_id: str
    sha1: str
    version: int
    fetched_at: int


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# Live until someone applies a state; every component renders the same DEFAULT_STATE.
DEFAULT_VERSION = StateVersion(
    version=0,
    state_json=DEFAULT_STATE.to_json(),
    author="built-in default",
    created_at=0,
    sha256=sha256_hex(DEFAULT_STATE.to_json()),
    comment="",
)


class ConfigStore(StateStore):
    def __init__(self, database: StateDatabase) -> None:
        super().__init__(database)

    # Versions

    def live(self) -> StateVersion:
        """The live version, or the built-in default when nothing was ever applied."""
        return self._live(self._db)

    @staticmethod
    def _live(db: Queryable) -> StateVersion:
        row = db.execute(
            f"SELECT {VERSION_COLUMNS} FROM config_versions"
            " WHERE version = (SELECT version FROM live_version WHERE id = 1)"
        ).fetchone()
        return StateVersion(*row) if row else DEFAULT_VERSION

    def version(self, version: int) -> StateVersion | None:
        if version == 0:
            return DEFAULT_VERSION
        row = self._db.execute(
            f"SELECT {VERSION_COLUMNS} FROM config_versions WHERE version = ?", (version,)
        ).fetchone()
        return StateVersion(*row) if row else None

    def versions(self) -> list[StateVersion]:
        """Every stored version, newest first."""
        rows = self._db.execute(
            f"SELECT {VERSION_COLUMNS} FROM config_versions ORDER BY version DESC"
        ).fetchall()
        return [StateVersion(*row) for row in rows]

    def count_versions(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM config_versions").fetchone()[0]

    def next_version(self) -> int:
        newest = self._db.execute("SELECT MAX(version) FROM config_versions").fetchone()[0]
        return (newest or 0) + 1

    def make_live(
        self, state_json: str, author: str, comment: str, rendered_json: str, now: int
    ) -> StateVersion:
        """Store state_json as the next version and make it live."""
        with self._transaction() as db:
            _refuse_during_rollout(db)
            stored = self._insert_version(db, state_json, author, comment, rendered_json, now)
            self._point_live(db, stored.version)
        return stored

    def start_rollout(
        self,
        state_json: str,
        author: str,
        comment: str,
        rendered_json: str,
        now: int,
        percent: int,
        node_ids: Iterable[str],
    ) -> Rollout:
        """Store state_json as the next version, as the candidate of a staged rollout."""
        with self._transaction() as db:
            _refuse_during_rollout(db)
            stored = self._insert_version(db, state_json, author, comment, rendered_json, now)
            node_list = tuple(node_ids)
            db.execute(
                "INSERT INTO rollout (id, candidate_version, percent, node_ids_json, started_at,"
                " author) VALUES (1, ?, ?, ?, ?, ?)",
                (stored.version, percent, json.dumps(node_list), now, author),
            )
        return Rollout(stored, percent, node_list, now, author)

    def rollout(self) -> Rollout | None:
        row = self._db.execute(
            "SELECT candidate_version, percent, node_ids_json, started_at, author FROM rollout"
        ).fetchone()
        if row is None:
            return None
        candidate = self.version(row[0])
        assert candidate is not None, "a rollout's candidate is always a stored version"
        return Rollout(candidate, row[1], tuple(json.loads(row[2])), row[3], row[4])

    def promote_rollout(self) -> StateVersion | None:
        """The candidate becomes live; None when no rollout is in progress."""
        with self._transaction() as db:
            row = db.execute("SELECT candidate_version FROM rollout").fetchone()
            if row is None:
                return None
            self._point_live(db, row[0])
            db.execute("DELETE FROM rollout")
            promoted = self._live(db)
        return promoted

    def abort_rollout(self) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM rollout").rowcount > 0

    def _insert_version(
        self,
        db: Transaction,
        state_json: str,
        author: str,
        comment: str,
        rendered_json: str,
        now: int,
    ) -> StateVersion:
        newest = db.execute("SELECT MAX(version) FROM config_versions").fetchone()[0]
        stored = StateVersion(
            (newest or 0) + 1, state_json, author, now, sha256_hex(state_json), comment
        )
        # config_json keeps the global group's rendering: what the version meant before
        # states existed, and readable with sqlite3 alone.
        db.execute(
            "INSERT INTO config_versions (version, config_json, author, created_at, sha256,"
            " state_json, comment) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                stored.version,
                rendered_json,
                author,
                now,
                stored.sha256,
                state_json,
                comment,
            ),
        )
        return stored

    @staticmethod
    def _point_live(db: Transaction, version: int) -> None:
        db.execute(
            "INSERT INTO live_version (id, version) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            (version,),
        )

    # Label memberships

    def memberships(self) -> dict[str, frozenset[str]]:
        """node_id -> the labels it is a member of."""
        found: dict[str, set[str]] = {}
        for label, node_id in self._db.execute("SELECT label, node_id FROM label_members"):
            found.setdefault(node_id, set()).add(label)
        return {node_id: frozenset(labels) for node_id, labels in found.items()}

    def label_members(self, label: str) -> set[str]:
        rows = self._db.execute("SELECT node_id FROM label_members WHERE label = ?", (label,))
        return {node_id for (node_id,) in rows}

    def set_label_members(self, label: str, members: Iterable[str]) -> set[str]:
        """Make `members` exactly the nodes of label; returns the nodes that joined or left."""
        wanted = set(members)
        with self._transaction() as db:
            current = {
                node_id
                for (node_id,) in db.execute(
                    "SELECT node_id FROM label_members WHERE label = ?", (label,)
                )
            }
            db.executemany(
                "DELETE FROM label_members WHERE label = ? AND node_id = ?",
                [(label, node_id) for node_id in current - wanted],
            )
            db.executemany(
                "INSERT INTO label_members (label, node_id) VALUES (?, ?)",
                [(label, node_id) for node_id in wanted - current],
            )
        return current ^ wanted

    def forget_labels_except(self, labels: Iterable[str]) -> set[str]:
        """Drop the memberships of labels no longer defined; returns the nodes affected."""
        keep = sorted(set(labels))
        marks = ",".join("?" * len(keep))
        where = f"label NOT IN ({marks})" if keep else "1 = 1"
        with self._transaction() as db:
            affected = {
                node_id
                for (node_id,) in db.execute(
                    f"SELECT DISTINCT node_id FROM label_members WHERE {where}", keep
                )
            }
            db.execute(f"DELETE FROM label_members WHERE {where}", keep)
        return affected

    # Config fetches

    def record_fetches(self, fetches: Iterable[ConfigFetch]) -> int:
        """Keep each node's latest fetch (a late batch never overwrites a newer one)."""
        rows = [(f.node_id, f.sha1, f.version, f.fetched_at) for f in fetches if f.node_id]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO config_fetches (node_id, sha1, version, fetched_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET"
                " sha1 = excluded.sha1, version = excluded.version,"
                " fetched_at = excluded.fetched_at"
                " WHERE excluded.fetched_at >= config_fetches.fetched_at",
                rows,
            )
        return len(rows)

    def fetch_counts(self) -> list[tuple[int, str, int]]:
        """(version, sha1, nodes) of the configs nodes fetched last."""
        return self._db.execute(
            "SELECT version, sha1, COUNT(*) FROM config_fetches"
            " GROUP BY version, sha1 ORDER BY version DESC, sha1"
        ).fetchall()

    def fetches_of(self, node_ids: Iterable[str]) -> dict[str, ConfigFetch]:
        wanted = list(node_ids)
        found: dict[str, ConfigFetch] = {}
        # Chunks stay below SQLite's limit on bound parameters.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._db.execute(
                "SELECT node_id, sha1, version, fetched_at FROM config_fetches"
                f" WHERE node_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({row[0]: ConfigFetch(*row) for row in rows})
        return found


def _refuse_during_rollout(db: Transaction) -> None:
    # Checked again inside the write transaction: another replica may have started a
    # rollout since the service looked.
    row = db.execute("SELECT candidate_version FROM rollout").fetchone()
    if row is not None:
        raise RolloutInProgress(
            f"a rollout of version {row[0]} is in progress; promote or abort it first"
        )
