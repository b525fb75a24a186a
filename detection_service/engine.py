"""The engine: runs each live rule on the rows that arrived since its last run, turns its
answer rows into alerts, and resolves alerts that stopped hitting.

A rule's window is [watermark, now - settle) on `stored_at`, the time ClickHouse stamped
each row at insert: a batch replayed late from ingest's spool (old `received_at`) arrives
late and is seen then, never missed. The settle delay leaves inserts in flight time to
become visible before their seconds are closed. The SQL runs through ingest's LogStore
(read-only, with the service token), the one process that may open an embedded store.
Only the leader runs rules (docs/adr/0021-detections-on-arrival.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from detection_service import metrics
from detection_service.store import OPEN, Alert, DetectionStore, RuleState
from osquery_config.detections import Detection

log = logging.getLogger(__name__)

# At most this many answer rows are kept per alert event (the rest are counted).
ROWS_PER_EVENT = 50
FIRING, HITS, RESOLVED = "firing", "hits", "resolved"


class RuleFailed(Exception):
    """The rule's SQL failed: ClickHouse's message, on one line."""


class LogReader(Protocol):
    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of one read-only statement; RuleFailed with the store's message."""


@dataclass
class Hit:
    """Answer rows of one run that share a dedup key."""

    dedup_key: str
    host_identifier: str
    rows: list[dict] = field(default_factory=list)


def group_hits(rule: Detection, columns: list[str], rows: list[list[Any]]) -> list[Hit]:
    """The rule's answer rows grouped by its dedup key, in order of first appearance."""
    missing = [c for c in rule.dedup_key if c not in columns]
    if missing:
        raise RuleFailed(
            f"the rule's answer has no column {missing[0]!r} of its dedup_key "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    hits: dict[str, Hit] = {}
    for values in rows:
        row = dict(zip(columns, values, strict=True))
        key = json.dumps([row[c] for c in rule.dedup_key], default=str, separators=(",", ":"))
        hit = hits.setdefault(key, Hit(key, str(row.get("host_identifier", ""))))
        hit.rows.append(row)
    return list(hits.values())


def alert_event(
    alert: Alert, event: str, at: int, rows: Sequence[dict], rule: Detection | None
) -> dict:
    """What every destination is sent about one event of one alert (docs/detections.md)."""
    return {
        "event_id": uuid.uuid4().hex,
        "event": event,
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "severity": alert.severity,
        "description": rule.description if rule else "",
        "dedup_key": alert.dedup_key,
        "host_identifier": alert.host_identifier,
        "first_seen": alert.first_seen,
        "last_seen": alert.last_seen,
        "hits": alert.hits,
        "at": at,
        "rows": [json.loads(json.dumps(row, default=str)) for row in rows[:ROWS_PER_EVENT]],
    }


class Engine:
    """Runs the live rules when due, on the leader only."""

    def __init__(
        self,
        store: DetectionStore,
        reader: LogReader,
        destinations: Callable[[str], list[str]],
        settle_s: int,
        max_window_s: int,
        leads: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        store_clock: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        # event -> where it goes (ClickHouse always; Alertmanager and webhooks as set).
        self.destinations = destinations
        self.settle_s = settle_s
        self.max_window_s = max_window_s
        self.leads = leads
        # This host's clock (alert times, resolution), and the store's (windows; default
        # this host's too).
        self.clock = clock
        self.store_clock = store_clock
        self.rules: dict[str, Detection] = {}
        self.rules_known = False
        self.leader = False
        # When each rule is next due (monotonic), kept in memory: a restart runs each at once.
        self._due: dict[str, float] = {}
        # Set when work arrives that should not wait for the next tick (new rules).
        self.wake = asyncio.Event()

    def set_rules(self, rules: Sequence[Detection]) -> None:
        self.rules = {rule.name: rule for rule in rules}
        self.rules_known = True
        self.wake.set()

    async def run_forever(self, tick_s: float = 1.0) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("detection tick failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), tick_s)
            self.wake.clear()

    async def tick(self) -> None:
        self.leader = await asyncio.to_thread(self.leads)
        metrics.LEADER.set(1 if self.leader else 0)
        if not self.leader or not self.rules_known:
            return
        states = await asyncio.to_thread(self.store.rule_states)
        if set(states) != set(self.rules):
            try:
                horizon = await self._store_now() - self.settle_s
            except RuleFailed as exc:
                log.warning("new detection rules wait for the log store: %s", exc)
                return
            states = await asyncio.to_thread(self._sync_rules, horizon)
        now = time.monotonic()
        for rule in list(self.rules.values()):
            if self._due.get(rule.name, 0.0) <= now:
                caught_up = await self.run_rule(rule, states[rule.name])
                # Behind (after an outage): the next window at once, else on schedule.
                self._due[rule.name] = now if not caught_up else now + rule.schedule
        await asyncio.to_thread(self.resolve_quiet)
        await asyncio.to_thread(self._show_lag)

    def _sync_rules(self, horizon: int | None = None) -> dict[str, RuleState]:
        """Each live rule's state (a new rule starts at horizon: rows stored from then on);
        rules no longer live forgotten."""
        states = self.store.rule_states()
        if set(states) == set(self.rules):
            return states
        if horizon is None:
            horizon = int(self.clock()) - self.settle_s
        for name in set(self.rules) - set(states):
            self.store.start_rule(name, horizon)
        self.store.forget_rules(list(self.rules))
        for gone in set(self._due) - set(self.rules):
            del self._due[gone]
        return self.store.rule_states()

    async def run_rule(self, rule: Detection, state: RuleState) -> bool:
        """One window of one rule; True when it reached the settle horizon."""
        now = int(self.clock())
        start = state.watermark
        began = time.monotonic()
        try:
            horizon = await self._store_now() - self.settle_s
            end = min(horizon, start + self.max_window_s)
            if end <= start:
                return True
            columns, rows = await self.reader.query(rule.window_sql(start, end))
            hits = group_hits(rule, columns, rows)
        except RuleFailed as exc:
            metrics.RUNS.labels(rule.name, "error").inc()
            await asyncio.to_thread(self.store.record_failure, rule.name, now, str(exc))
            log.warning("detection %s failed: %s", rule.name, exc)
            return True
        committed = await asyncio.to_thread(self._commit, rule, start, end, now, hits, len(rows))
        metrics.RUN_SECONDS.labels(rule.name).observe(time.monotonic() - began)
        metrics.RUNS.labels(rule.name, "ok" if committed else "superseded").inc()
        if committed:
            metrics.HITS.labels(rule.name).inc(len(rows))
        return end >= horizon

    async def _store_now(self) -> int:
        """Now by the log store's clock: the one that stamps stored_at, so a skew between
        this host and ClickHouse cannot close a window over seconds not yet stamped."""
        if self.store_clock is None:
            return int(self.clock())
        return await self.store_clock()

    def _commit(
        self, rule: Detection, start: int, end: int, now: int, hits: list[Hit], rows: int
    ) -> bool:
        try:
            with self.store.database.transaction() as tx:
                for hit in hits:
                    self._raise(tx, rule, hit, now)
                if not self.store.advance(tx, rule.name, start, end, now, rows):
                    raise _Superseded
        except _Superseded:
            log.warning("detection %s: window %d-%d already run elsewhere", rule.name, start, end)
            return False
        return True

    def _raise(self, tx: Any, rule: Detection, hit: Hit, now: int) -> None:
        alert = self.store.open_alert(tx, rule.name, hit.dedup_key)
        if alert is None:
            alert = Alert(
                uuid.uuid4().hex, rule.name, hit.dedup_key, hit.host_identifier, rule.severity,
                OPEN, now, now, len(hit.rows), 0,
            )  # fmt: skip
            self.store.insert_alert(tx, alert)
            event = alert_event(alert, FIRING, now, hit.rows, rule)
        else:
            self.store.extend_alert(tx, alert.alert_id, now, len(hit.rows))
            alert = replace(alert, last_seen=now, hits=alert.hits + len(hit.rows))
            event = alert_event(alert, HITS, now, hit.rows, rule)
        self.store.enqueue(tx, self.destinations(event["event"]), event["event_id"], event, now)

    def resolve_quiet(self) -> int:
        """Close open alerts whose rule has not hit them for its resolve_after, and those
        of rules no longer live; each closing is an event for every destination."""
        now = int(self.clock())
        closed = 0
        for alert in self.store.open_alerts():
            rule = self.rules.get(alert.rule)
            if rule is not None and alert.last_seen + rule.resolve_after > now:
                continue
            with self.store.database.transaction() as tx:
                if not self.store.resolve_alert(tx, alert.alert_id, now):
                    continue
                event = alert_event(alert, RESOLVED, now, [], rule)
                self.store.enqueue(tx, self.destinations(RESOLVED), event["event_id"], event, now)
            closed += 1
        return closed

    def _show_lag(self) -> None:
        now = int(self.clock())
        for name, state in self.store.rule_states().items():
            metrics.LAG.labels(name).set(max(0, now - state.watermark))
            if name in self.rules:
                metrics.SCHEDULE.labels(name).set(self.rules[name].schedule)


class _Superseded(Exception):
    """Another replica moved the watermark first: this run's effects are rolled back."""
