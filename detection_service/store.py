"""The detection service's state, in SQLite or PostgreSQL: each rule's watermark, the open
and resolved alerts, and the delivery outbox with every attempt.

A rule's run commits in one transaction: the alerts it opened or extended, their outbox
entries, and the rule's new watermark, which only moves if it is still where the run
started (compare-and-set). So a window's rows raise their alerts exactly once, whether the
process dies mid-run or two replicas briefly both believe they lead
(docs/adr/0021-detections-on-arrival.md). All SQL of the service lives here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from quarry.state.database import StateDatabase, StateStore, Transaction
from quarry.state.migrations import Migration
from quarry.state.service_database import SchemaComponent, ServiceSchema
from quarry.state.table_schema import INTEGER, SERIAL, TEXT, Column, Index, Table

RULE_STATE = Table(
    "rule_state",
    (
        Column("rule", TEXT),
        # Rows ClickHouse stored before this (unix seconds) have been evaluated.
        Column("watermark", INTEGER),
        Column("last_run_at", INTEGER, default=0),
        Column("last_hits", INTEGER, default=0),
        Column("total_hits", INTEGER, default=0),
        Column("last_error", TEXT, default=""),
    ),
    primary_key=("rule",),
)
ALERTS = Table(
    "alerts",
    (
        Column("alert_id", TEXT),
        Column("rule", TEXT),
        Column("dedup_key", TEXT),
        Column("host_identifier", TEXT, default=""),
        Column("severity", TEXT),
        Column("status", TEXT),
        Column("first_seen", INTEGER),
        Column("last_seen", INTEGER),
        Column("hits", INTEGER),
        Column("resolved_at", INTEGER, default=0),
    ),
    primary_key=("alert_id",),
    indexes=(Index("alerts_open", ("status", "rule", "dedup_key")),),
)
OUTBOX = Table(
    "outbox",
    (
        Column("id", SERIAL),
        Column("destination", TEXT),
        Column("event_id", TEXT),
        Column("payload", TEXT),
        Column("created_at", INTEGER),
        Column("attempts", INTEGER, default=0),
        Column("next_attempt_at", INTEGER, default=0),
        Column("delivered_at", INTEGER, default=0),
        Column("last_error", TEXT, default=""),
    ),
    primary_key=("id",),
    indexes=(Index("outbox_due", ("delivered_at", "next_attempt_at")),),
)
ATTEMPTS = Table(
    "delivery_attempts",
    (
        Column("outbox_id", INTEGER),
        Column("at_ms", INTEGER),
        Column("outcome", TEXT),
        Column("detail", TEXT, default=""),
    ),
    indexes=(Index("attempts_by_entry", ("outbox_id",)),),
    rowid=True,
)
MIGRATIONS = (
    Migration(
        1, "rule state, alerts, delivery outbox", tables=(RULE_STATE, ALERTS, OUTBOX, ATTEMPTS)
    ),
)
SERVICE_SCHEMA = ServiceSchema("detection", (SchemaComponent("detection", MIGRATIONS),))

OPEN, RESOLVED = "open", "resolved"


@dataclass(frozen=True)
class RuleState:
    rule: str
    watermark: int
    last_run_at: int
    last_hits: int
    total_hits: int
    last_error: str


@dataclass(frozen=True)
class Alert:
    alert_id: str
    rule: str
    dedup_key: str
    host_identifier: str
    severity: str
    status: str
    first_seen: int
    last_seen: int
    hits: int
    resolved_at: int


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    destination: str
    event_id: str
    payload: dict
    attempts: int


_ALERT_COLUMNS = (
    "alert_id, rule, dedup_key, host_identifier, severity, status, first_seen, last_seen, "
    "hits, resolved_at"
)


class DetectionStore(StateStore):
    def __init__(self, database: StateDatabase) -> None:
        super().__init__(database)

    # Rules

    def rule_states(self) -> dict[str, RuleState]:
        rows = self._db.execute(
            "SELECT rule, watermark, last_run_at, last_hits, total_hits, last_error FROM rule_state"
        )
        return {row[0]: RuleState(*row) for row in rows}

    def start_rule(self, rule: str, watermark: int) -> None:
        """A rule seen for the first time starts at watermark (rows from then on)."""
        with self._transaction() as tx:
            present = tx.execute("SELECT 1 FROM rule_state WHERE rule = ?", (rule,)).fetchone()
            if present is None:
                tx.execute(
                    "INSERT INTO rule_state (rule, watermark) VALUES (?, ?)", (rule, watermark)
                )

    def record_failure(self, rule: str, at: int, error: str) -> None:
        with self._transaction() as tx:
            tx.execute(
                "UPDATE rule_state SET last_run_at = ?, last_error = ? WHERE rule = ?",
                (at, error, rule),
            )

    def advance(self, tx: Transaction, rule: str, start: int, end: int, at: int, hits: int) -> bool:
        """Move the rule's watermark from start to end; False if it is no longer at start
        (another replica ran this window): the caller's transaction must then roll back."""
        changed = tx.execute(
            "UPDATE rule_state SET watermark = ?, last_run_at = ?, last_hits = ?, "
            "total_hits = total_hits + ?, last_error = '' WHERE rule = ? AND watermark = ?",
            (end, at, hits, hits, rule, start),
        ).rowcount
        return changed == 1

    def forget_rules(self, live: Sequence[str]) -> None:
        """Drop the state of rules no longer in the live config (a rule applied again later
        starts afresh, from its rows of then on)."""
        with self._transaction() as tx:
            for (rule,) in tx.execute("SELECT rule FROM rule_state").fetchall():
                if rule not in live:
                    tx.execute("DELETE FROM rule_state WHERE rule = ?", (rule,))

    # Alerts

    def open_alert(self, tx: Transaction, rule: str, dedup_key: str) -> Alert | None:
        row = tx.execute(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE status = ? AND rule = ? AND dedup_key = ?",
            (OPEN, rule, dedup_key),
        ).fetchone()
        return Alert(*row) if row else None

    def insert_alert(self, tx: Transaction, alert: Alert) -> None:
        tx.execute(
            f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.alert_id, alert.rule, alert.dedup_key, alert.host_identifier,
                alert.severity, alert.status, alert.first_seen, alert.last_seen, alert.hits,
                alert.resolved_at,
            ),
        )  # fmt: skip

    def extend_alert(self, tx: Transaction, alert_id: str, at: int, hits: int) -> None:
        tx.execute(
            "UPDATE alerts SET last_seen = ?, hits = hits + ? WHERE alert_id = ?",
            (at, hits, alert_id),
        )

    def resolve_alert(self, tx: Transaction, alert_id: str, at: int) -> bool:
        changed = tx.execute(
            "UPDATE alerts SET status = ?, resolved_at = ? WHERE alert_id = ? AND status = ?",
            (RESOLVED, at, alert_id, OPEN),
        ).rowcount
        return changed == 1

    def open_alerts(self, rule: str | None = None) -> list[Alert]:
        sql = f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE status = ?"
        params: tuple = (OPEN,)
        if rule is not None:
            sql, params = sql + " AND rule = ?", (OPEN, rule)
        return [Alert(*row) for row in self._db.execute(sql + " ORDER BY first_seen", params)]

    def open_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT rule, COUNT(*) FROM alerts WHERE status = ? GROUP BY rule", (OPEN,)
        )
        return {rule: int(count) for rule, count in rows}

    # Outbox

    def enqueue(
        self, tx: Transaction, destinations: Sequence[str], event_id: str, payload: dict, at: int
    ) -> None:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        tx.executemany(
            "INSERT INTO outbox (destination, event_id, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(destination, event_id, text, at, at) for destination in destinations],
        )

    def due(self, now: int, limit: int = 200) -> list[OutboxEntry]:
        rows = self._db.execute(
            "SELECT id, destination, event_id, payload, attempts FROM outbox "
            "WHERE delivered_at = 0 AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [OutboxEntry(i, d, e, json.loads(p), a) for i, d, e, p, a in rows]

    def record_attempts(
        self, outcomes: Sequence[tuple[OutboxEntry, str, str]], now_ms: int, retry_at: dict
    ) -> None:
        """Each attempt's outcome ("delivered" or "failed") and detail; delivered entries
        are done, failed ones wait until retry_at[id]."""
        now = now_ms // 1000
        with self._transaction() as tx:
            tx.executemany(
                "INSERT INTO delivery_attempts (outbox_id, at_ms, outcome, detail) "
                "VALUES (?, ?, ?, ?)",
                [(entry.id, now_ms, outcome, detail[:500]) for entry, outcome, detail in outcomes],
            )
            for entry, outcome, detail in outcomes:
                if outcome == "delivered":
                    tx.execute(
                        "UPDATE outbox SET attempts = attempts + 1, delivered_at = ?, "
                        "last_error = '' WHERE id = ?",
                        (now, entry.id),
                    )
                else:
                    tx.execute(
                        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                        "last_error = ? WHERE id = ?",
                        (retry_at[entry.id], detail[:500], entry.id),
                    )

    def pending_count(self) -> int:
        return int(
            self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at = 0").fetchone()[0]
        )

    def attempts(self, destination_prefix: str = "") -> list[tuple[str, str, str]]:
        """(destination, event_id, outcome) of every attempt, oldest first."""
        rows = self._db.execute(
            "SELECT o.destination, o.event_id, a.outcome FROM delivery_attempts a "
            "JOIN outbox o ON o.id = a.outbox_id ORDER BY a.rowid"
        )
        return [tuple(row) for row in rows if row[0].startswith(destination_prefix)]
