"""Group commit, twice: batches are spooled to disk in groups and acked, then replayed into
ClickHouse in groups.

The data flow of one batch: receive -> dedup -> flatten check -> spool append+fsync -> ack ->
replay -> insert -> checkpoint.

`GroupCommitter` is the receive side. A batch is acknowledged ok once it is written and fsynced
to the spool, because osquery deletes a batch from its buffer as soon as the gateway reports
success; batches that arrive while one append is being fsynced go into the next append, so a
busy ingest pays one fsync per group, not per batch. A batch that cannot be flattened is
refused before it reaches the spool, so replay never meets poison. Above
`ingest_spool_max_bytes` unreplayed bytes new batches are refused (backpressure: osquery keeps
them and retries).

`Replayer` is the ClickHouse side. It reads spooled records in order, groups them until the group
holds `flush_rows` rows or `flush_interval_s` has passed since the previous insert began, inserts
one insert per table, then advances the spool's checkpoint. A failed insert is retried with
backoff, in order, while the spool keeps accepting. Records that may already be in ClickHouse
(found past the checkpoint at start-up, or after an insert that failed) are first checked:
batch ids already fully present are not inserted again.

Duplicates (osquery re-sends): a batch id seen recently, or waiting for its append, is not
spooled again. The set of recent ids is rebuilt at start-up from the spool's retained segments,
so the de-duplication window is the spool retention (docs/adr/0004-spool-and-exactly-once.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from ingest_service import metrics
from ingest_service.log_rows import FlatBatch, MalformedBatch, Row, flatten_batch
from ingest_service.log_store import LogStore, QueryResult
from ingest_service.spool import Position, Spool, SpoolRecord
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

# Sends one LogAck back to whoever sent the batch.
Reply = Callable[[logs_pb2.LogAck], Awaitable[None]]

RECENT_BATCH_IDS = 200_000
# Flattened batches kept in memory for the replayer, so a live batch is flattened only once.
CACHED_ROWS = 500_000
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0
# How long an analyst's query waits for what was acked before it to reach ClickHouse.
READ_YOUR_WRITES_WAIT_S = 5.0


class RecentBatchIds:
    """The batch_ids stored most recently, at most `capacity` of them."""

    def __init__(self, capacity: int = RECENT_BATCH_IDS) -> None:
        self.capacity = capacity
        self.ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, batch_id: str) -> bool:
        if batch_id in self.ids:
            self.ids.move_to_end(batch_id)
            return True
        return False

    def add(self, batch_id: str) -> None:
        self.ids[batch_id] = None
        self.ids.move_to_end(batch_id)
        while len(self.ids) > self.capacity:
            self.ids.popitem(last=False)


def recent_ids_from_spool(spool: Spool) -> RecentBatchIds:
    """The batch ids of every record in the spool's retained segments (slow: reads them all)."""
    recent = RecentBatchIds()
    for record in spool.read_from(spool.first_position()):
        batch_id = logs_pb2.LogBatch.FromString(record.payload).batch_id
        if batch_id:
            recent.add(batch_id)
    return recent


# The receive side


@dataclass
class WaitingBatch:
    """One batch waiting for its spool append, and everyone waiting for its ack."""

    batch_id: str
    frame: bytes
    flat: FlatBatch
    reply: Reply
    # Copies of the same batch that arrived while this one was waiting.
    duplicate_replies: list[Reply] = field(default_factory=list)


class GroupCommitter:
    """Takes raw LogBatch frames, spools them in groups, and replies with a LogAck each."""

    def __init__(
        self, spool: Spool, replayer: Replayer, max_unreplayed_bytes: int, recent: RecentBatchIds
    ) -> None:
        self.spool = spool
        self.replayer = replayer
        self.max_unreplayed_bytes = max_unreplayed_bytes
        self.recent = recent
        # Every batch_id received and not yet acked.
        self.unsettled: dict[str, WaitingBatch] = {}
        self.waiting: list[WaitingBatch] = []
        self.wake = asyncio.Event()
        self.stopping = False

    async def submit(self, frame: bytes, reply: Reply) -> None:
        """Accept one LogBatch frame; its ack is sent now (error, duplicate) or after the fsync."""
        try:
            batch = logs_pb2.LogBatch.FromString(frame)
        except DecodeError as exc:
            error = f"frame is not a LogBatch protobuf ({len(frame)} bytes): {exc}"
            await self.reject("", error, reply)
            return
        # Duplicates first: a re-sent batch costs no parsing.
        if batch.batch_id in self.unsettled:
            self.unsettled[batch.batch_id].duplicate_replies.append(reply)
            metrics.DUPLICATES.inc()
            return
        if batch.batch_id and batch.batch_id in self.recent:
            await self.ack_duplicate(batch.batch_id, reply)
            return
        try:
            flat = flatten_batch(batch)
        except MalformedBatch as exc:
            await self.reject(batch.batch_id, f"unreadable log batch: {exc}", reply)
            return
        metrics.SKIPPED_RECORDS.inc(flat.skipped_records)
        if not flat.rows:
            # Nothing to store (an empty snapshot): stored, trivially.
            self.remember(batch.batch_id)
            metrics.BATCHES.labels("stored").inc()
            await reply(logs_pb2.LogAck(batch_id=batch.batch_id, ok=True, rows=0))
            return
        unreplayed = self.spool.unreplayed_bytes()
        if unreplayed > self.max_unreplayed_bytes:
            metrics.SPOOL_FULL_REFUSALS.inc()
            error = f"ingest spool full ({unreplayed} bytes unreplayed): retry later"
            await self.refuse(batch.batch_id, error, reply)
            return
        self.add_waiting(WaitingBatch(batch.batch_id, frame, flat, reply))

    async def reject(self, batch_id: str, error: str, reply: Reply) -> None:
        log.warning("rejected batch %s: %s", batch_id or "?", error)
        metrics.BATCHES.labels("rejected").inc()
        await reply(logs_pb2.LogAck(batch_id=batch_id, ok=False, error=error))

    async def refuse(self, batch_id: str, error: str, reply: Reply) -> None:
        metrics.BATCHES.labels("failed").inc()
        await reply(logs_pb2.LogAck(batch_id=batch_id, ok=False, error=error))

    async def ack_duplicate(self, batch_id: str, reply: Reply) -> None:
        metrics.DUPLICATES.inc()
        metrics.BATCHES.labels("duplicate").inc()
        await reply(logs_pb2.LogAck(batch_id=batch_id, ok=True, duplicate=True))

    def remember(self, batch_id: str) -> None:
        if batch_id:
            self.recent.add(batch_id)

    def add_waiting(self, waiting: WaitingBatch) -> None:
        if waiting.batch_id:
            self.unsettled[waiting.batch_id] = waiting
        self.waiting.append(waiting)
        metrics.UNSETTLED_BATCHES.inc()
        self.wake.set()

    async def run(self) -> None:
        """Append and ack groups one after another until stop() and nothing is left waiting."""
        while True:
            while not self.waiting and not self.stopping:
                self.wake.clear()
                await self.wake.wait()
            if not self.waiting:
                return
            group, self.waiting = self.waiting, []
            await self.append_group(group)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def append_group(self, group: list[WaitingBatch]) -> None:
        try:
            positions = await asyncio.to_thread(self.spool.append, [w.frame for w in group])
        except OSError as exc:
            log.error("spool append of %d batches failed: %s", len(group), exc)
            for waiting in group:
                await self.settle(waiting, f"ingest spool write failed: {exc}")
            return
        self.replayer.spooled(
            [(position, w.flat) for position, w in zip(positions, group, strict=True)]
        )
        for waiting in group:
            await self.settle(waiting, "")

    async def settle(self, waiting: WaitingBatch, error: str) -> None:
        self.unsettled.pop(waiting.batch_id, None)
        metrics.UNSETTLED_BATCHES.dec()
        if error:
            metrics.BATCHES.labels("failed").inc(1 + len(waiting.duplicate_replies))
            ack = logs_pb2.LogAck(batch_id=waiting.batch_id, ok=False, error=error)
            for reply in (waiting.reply, *waiting.duplicate_replies):
                await reply(ack)
            return
        self.remember(waiting.batch_id)
        metrics.BATCHES.labels("stored").inc()
        rows = len(waiting.flat.rows)
        await waiting.reply(logs_pb2.LogAck(batch_id=waiting.batch_id, ok=True, rows=rows))
        for reply in waiting.duplicate_replies:
            metrics.BATCHES.labels("duplicate").inc()
            await reply(logs_pb2.LogAck(batch_id=waiting.batch_id, ok=True, duplicate=True))


# The ClickHouse side


@dataclass
class ReplayGroup:
    """Consecutive spooled records, flattened, and where the checkpoint goes once inserted."""

    records: int = 0
    end: Position = field(default_factory=lambda: Position(0, 0))
    rows: dict[str, list[Row]] = field(default_factory=dict)
    # Per table: (batch_id, rows it adds), to tell which batches are already present.
    batches: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # True when some of it may already be in ClickHouse.
    uncertain: bool = False
    # Rows of records spooled by this process (counted in Replayer.pending_rows).
    live_rows: int = 0

    def add(self, record: SpoolRecord, flat: FlatBatch, batch_id: str) -> None:
        self.records += 1
        self.end = record.next_position
        self.rows.setdefault(flat.table, []).extend(flat.rows)
        self.batches.setdefault(flat.table, []).append((batch_id, len(flat.rows)))

    def rows_of(self, table: str, present: set[str]) -> list[Row]:
        if not present:
            return self.rows[table]
        return [row for row in self.rows[table] if row["batch_id"] not in present]


class Replayer:
    """Moves spooled batches into the log store, in order, then advances the checkpoint."""

    def __init__(
        self, spool: Spool, store: LogStore, flush_rows: int, flush_interval_s: float
    ) -> None:
        self.spool = spool
        self.store = store
        self.flush_rows = max(1, flush_rows)
        self.flush_interval_s = flush_interval_s
        self.schema_ready = False
        # Records before this were spooled by an earlier process and may be in ClickHouse.
        self.uncertain_before = spool.end_position()
        self.startup_backlog = spool.unreplayed_records()
        # Shared by the event loop (spooled) and the worker thread (read_group).
        self.flats_lock = threading.Lock()
        self.flats: dict[Position, FlatBatch] = {}
        self.cached_rows = 0
        self.pending_rows = 0
        self.wake = asyncio.Event()
        self.stopping = False
        self.give_up_at = float("inf")
        self.last_flush = time.monotonic()
        self.replayed = threading.Condition()

    def spooled(self, entries: list[tuple[Position, FlatBatch]]) -> None:
        """Batches were just appended: keep their rows at hand and wake the replay."""
        for position, flat in entries:
            self.pending_rows += len(flat.rows)
            self.cache_flat(position, flat)
        metrics.PENDING_ROWS.set(self.pending_rows)
        self.wake.set()

    def cache_flat(self, position: Position, flat: FlatBatch) -> None:
        with self.flats_lock:
            # Past the cap (a long outage) the replay flattens again from disk instead.
            if self.cached_rows + len(flat.rows) <= CACHED_ROWS:
                self.flats[position] = flat
                self.cached_rows += len(flat.rows)

    def cached_flat(self, position: Position) -> FlatBatch | None:
        with self.flats_lock:
            flat = self.flats.pop(position, None)
            if flat is not None:
                self.cached_rows -= len(flat.rows)
            return flat

    def stop(self, grace_s: float) -> None:
        """Replay what it can within grace_s, then let run() return (the rest waits on disk)."""
        self.stopping = True
        self.give_up_at = time.monotonic() + grace_s
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wait_for_group()
            if self.out_of_time():
                return
            if not self.spool.unreplayed_records():
                if self.stopping:
                    return
                self.startup_backlog = 0
                continue
            self.last_flush = time.monotonic()
            group = await asyncio.to_thread(self.read_group)
            if not await self.insert_until_stored(group):
                return
            await asyncio.to_thread(self.spool.commit, group.end, group.records)
            self.replayed_group(group)

    def replayed_group(self, group: ReplayGroup) -> None:
        self.startup_backlog = max(0, self.startup_backlog - group.records)
        # May go below zero for a moment: replay can read a record before spooled() counts it.
        self.pending_rows -= group.live_rows
        metrics.PENDING_ROWS.set(max(0, self.pending_rows))
        with self.flats_lock:
            # Records replayed before spooled() cached them: drop them (oldest first).
            for position in list(self.flats):
                if position >= group.end:
                    break
                self.cached_rows -= len(self.flats.pop(position).rows)
        with self.replayed:
            self.replayed.notify_all()

    def out_of_time(self) -> bool:
        return self.stopping and time.monotonic() >= self.give_up_at

    async def wait_for_group(self) -> None:
        while not self.stopping:
            if self.startup_backlog or (
                self.pending_rows >= self.flush_rows and self.spool.unreplayed_records()
            ):
                return
            timeout = None
            if self.spool.unreplayed_records():
                timeout = self.last_flush + self.flush_interval_s - time.monotonic()
                if timeout <= 0:
                    return
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    def read_group(self) -> ReplayGroup:
        group = ReplayGroup()
        for record in self.spool.read_from(self.spool.checkpoint):
            batch = logs_pb2.LogBatch.FromString(record.payload)
            flat = self.cached_flat(record.position) or self.flatten(batch)
            group.add(record, flat, batch.batch_id)
            if record.position < self.uncertain_before:
                group.uncertain = True
            else:
                group.live_rows += len(flat.rows)
            if sum(map(len, group.rows.values())) >= self.flush_rows:
                break
        return group

    def flatten(self, batch: logs_pb2.LogBatch) -> FlatBatch:
        try:
            return flatten_batch(batch)
        except MalformedBatch as exc:
            # Checked before spooling; only a changed parser can get here. Never stall on it.
            log.error("spooled batch %s is unreadable now, not inserted: %s", batch.batch_id, exc)
            return FlatBatch("results")

    async def insert_until_stored(self, group: ReplayGroup) -> bool:
        """Insert the group, retrying with backoff; False if stopped before it was stored."""
        done: set[str] = set()
        delay = RETRY_FIRST_S
        while True:
            try:
                await asyncio.to_thread(self.insert_group, group, done)
                return True
            except Exception as exc:
                log.error("replay of %d batches failed (retrying): %s", group.records, exc)
                # The failed insert may have been committed all the same.
                group.uncertain = True
            if self.out_of_time():
                return False
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)
            delay = min(delay * 2, RETRY_CAP_S)

    def insert_group(self, group: ReplayGroup, done: set[str]) -> None:
        # The server may have been down at start-up: create the schema on first success.
        if not self.schema_ready:
            self.store.ensure_schema()
            self.schema_ready = True
        for table in group.rows:
            if table in done:
                continue
            present = (
                self.present_batches(table, group.batches[table]) if group.uncertain else set()
            )
            self.insert(table, group.rows_of(table, present))
            done.add(table)

    def present_batches(self, table: str, batches: list[tuple[str, int]]) -> set[str]:
        """The batch ids whose rows are all in the table already."""
        expected = {batch_id: rows for batch_id, rows in batches if batch_id}
        if not expected:
            return set()
        ids = ", ".join(sql_string(batch_id) for batch_id in expected)
        result: QueryResult = self.store.query(
            f"SELECT batch_id, count() FROM quarry.{table} WHERE batch_id IN ({ids}) "
            "GROUP BY batch_id"
        )
        present = set()
        for batch_id, count in result.rows:
            if int(count) >= expected[batch_id]:
                present.add(batch_id)
            else:
                log.warning(
                    "batch %s: %s of %d rows already in %s; inserting it again",
                    batch_id,
                    count,
                    expected[batch_id],
                    table,
                )
        if present:
            log.info("replay: %d batches already in %s, not inserted again", len(present), table)
        return present

    def insert(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        started = time.monotonic()
        try:
            self.store.insert_rows(table, rows)
        except Exception:
            metrics.INSERT_ERRORS.labels(table).inc()
            raise
        finally:
            metrics.INSERT_SECONDS.labels(table).observe(time.monotonic() - started)
        metrics.ROWS_INSERTED.labels(table).inc(len(rows))

    def wait_until_replayed(self, records: int, timeout_s: float) -> None:
        """Block (a worker thread) until `records` spooled records have been replayed."""
        with self.replayed:
            self.replayed.wait_for(lambda: self.spool.replayed_records >= records, timeout_s)


class ReplayedReads:
    """The log store for analysts' queries: a query first waits (a little) for what was acked
    before it to be replayed, so a log acked and then queried is found."""

    def __init__(self, store: LogStore, spool: Spool, replayer: Replayer) -> None:
        self.store = store
        self.spool = spool
        self.replayer = replayer

    def query(self, sql: str) -> QueryResult:
        self.replayer.wait_until_replayed(self.spool.appended_records, READ_YOUR_WRITES_WAIT_S)
        return self.store.query(sql)


def sql_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
