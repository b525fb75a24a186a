"""The ClickHouse side of ingest: move spooled batches into the log store, exactly once.

A batch belongs to this module from the moment its spool append is fsynced: the receive side
(ingest_service/group_commit.py) hands over each one once, as a `SpooledBatch` (where it was
spooled, the batch as spooled, its rows), and never touches it again. `Replayer` keeps those in
memory, in spool order, so a live batch is neither read back from disk nor parsed nor flattened
again; only what it cannot hold (records found past the checkpoint at start-up, or more than
CACHED_ROWS rows behind during a long outage) is read from the spool.

It groups records until the group holds `flush_rows` rows or `flush_interval_s` has passed
since the previous insert began, inserts one insert per table, then advances the spool's
checkpoint. A failed insert is retried with backoff, in order, while the spool keeps accepting.
Records that may already be in ClickHouse (found past the checkpoint at start-up, sent to this
replica as a failover, or in a group whose insert failed) are first checked: batch ids already
fully present are not inserted again (docs/adr/0004-spool-and-exactly-once.md).

`ReplayedReads` gives `quarry sql` read-your-writes: a query waits until what was acknowledged
before it has been replayed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ingest_service import metrics
from ingest_service.log_rows import (
    BATCH_ID_INDEX,
    RAW_TABLE,
    TABLE_COLUMNS,
    FlatBatch,
    MalformedBatch,
    Row,
    flatten_batch,
    raw_batch_row,
)
from ingest_service.log_store import LogStore, QueryResult
from ingest_service.spool import Position, Spool
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

# Rows of spooled batches kept in memory for the replay; past it (a long outage) the replay
# reads and flattens them again from disk.
CACHED_ROWS = 500_000
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0
# How long an analyst's query waits for what was acked before it to reach ClickHouse.
READ_YOUR_WRITES_WAIT_S = 5.0


@dataclass
class SpooledBatch:
    """One batch just fsynced to the spool: where it starts, the batch as spooled (repeated
    lines left out), and its rows."""

    position: Position
    next_position: Position
    batch: logs_pb2.LogBatch
    flat: FlatBatch


@dataclass
class ReplayGroup:
    """Consecutive spooled records, flattened, and where the checkpoint goes once inserted."""

    records: int = 0
    end: Position = field(default_factory=lambda: Position(0, 0))
    row_count: int = 0
    rows: dict[str, list[Row]] = field(default_factory=dict)
    # Per table: (batch_id, rows it adds), to tell which batches are already present.
    batches: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # True when some of it may already be in ClickHouse.
    uncertain: bool = False
    # Rows of records spooled by this process (counted in Replayer.pending_rows).
    live_rows: int = 0

    def add(self, end: Position, batch: logs_pb2.LogBatch, flat: FlatBatch, raw: bool) -> None:
        self.records += 1
        self.end = end
        self.add_rows(flat.table, flat.rows, batch.batch_id)
        if raw:
            self.add_rows(RAW_TABLE, [raw_batch_row(batch)], batch.batch_id)

    def add_rows(self, table: str, rows: list[Row], batch_id: str) -> None:
        self.row_count += len(rows)
        self.rows.setdefault(table, []).extend(rows)
        self.batches.setdefault(table, []).append((batch_id, len(rows)))

    def rows_of(self, table: str, present: set[str]) -> list[Row]:
        if not present:
            return self.rows[table]
        return [row for row in self.rows[table] if row[BATCH_ID_INDEX] not in present]


class Replayer:
    """Moves spooled batches into the log store, in order, then advances the checkpoint."""

    def __init__(
        self,
        spool: Spool,
        store: LogStore,
        flush_rows: int,
        flush_interval_s: float,
        keep_raw_batches: bool = False,
    ) -> None:
        self.spool = spool
        self.store = store
        self.keep_raw_batches = keep_raw_batches
        self.flush_rows = max(1, flush_rows)
        self.flush_interval_s = flush_interval_s
        self.schema_ready = False
        # Records before this were spooled by an earlier process and may be in ClickHouse.
        self.uncertain_before = spool.end_position()
        # Records past the checkpoint, by what this replayer was told (the spool's own count
        # moves in its appending thread before the batches are handed over).
        self.unreplayed = spool.unreplayed_records()
        # The batches handed over, in spool order; the records between the checkpoint and the
        # first of them are on disk only while `on_disk` (read from the spool, up to `end`
        # when none is queued). `generation` changes whenever the queue is dropped.
        self.queued: deque[SpooledBatch] = deque()
        self.queued_rows = 0
        self.on_disk = self.unreplayed > 0
        self.end = self.uncertain_before
        self.generation = 0
        self.pending_rows = 0
        self.wake = asyncio.Event()
        # Waiting with nothing to replay: the next handed-over batch must wake it.
        self.idle = False
        self.stopping = False
        self.give_up_at = float("inf")
        self.last_flush = time.monotonic()
        self.replayed = threading.Condition()
        # Set (from a reader's thread) when an analyst's query waits for the replay: insert
        # now rather than at the end of the flush interval.
        self.reader_waiting = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def spooled(self, batches: list[SpooledBatch]) -> None:
        """Batches were just fsynced, in spool order: they are the replay's now.

        Wakes the replay only when a group is due, not for every batch.
        """
        for spooled in batches:
            rows = len(spooled.flat.rows)
            self.pending_rows += rows
            if self.queued_rows + rows > CACHED_ROWS:
                # Too far behind: these rows, and those queued before them, wait on disk.
                self.queued.clear()
                self.queued_rows = 0
                self.generation += 1
                self.on_disk = True
            if rows <= CACHED_ROWS:
                self.queued.append(spooled)
                self.queued_rows += rows
        self.unreplayed += len(batches)
        if batches:
            self.end = batches[-1].next_position
        metrics.PENDING_ROWS.set(self.pending_rows)
        if self.idle or self.pending_rows >= self.flush_rows:
            self.wake.set()

    def stop(self, grace_s: float) -> None:
        """Replay what it can within grace_s, then let run() return (the rest waits on disk)."""
        self.stopping = True
        self.give_up_at = time.monotonic() + grace_s
        self.wake.set()

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        while True:
            await self.wait_for_group()
            if self.out_of_time():
                return
            if not self.unreplayed:
                if self.stopping:
                    return
                continue
            self.last_flush = time.monotonic()
            self.reader_waiting.clear()
            group = await self.read_group()
            if not group.records:
                continue
            if not await self.insert_until_stored(group):
                return
            await asyncio.to_thread(self.spool.commit, group.end, group.records)
            self.replayed_group(group)

    def replayed_group(self, group: ReplayGroup) -> None:
        self.unreplayed -= group.records
        self.pending_rows -= group.live_rows
        metrics.PENDING_ROWS.set(max(0, self.pending_rows))
        with self.replayed:
            self.replayed.notify_all()

    def out_of_time(self) -> bool:
        return self.stopping and time.monotonic() >= self.give_up_at

    async def wait_for_group(self) -> None:
        """Until a group is due: a backlog on disk, `flush_rows` rows, a reader waiting, or
        `flush_interval_s` since the last insert began with something to replay."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            if self.unreplayed and (
                self.on_disk or self.pending_rows >= self.flush_rows or self.reader_waiting.is_set()
            ):
                return
            timer = None
            if self.unreplayed:
                delay = self.last_flush + self.flush_interval_s - time.monotonic()
                if delay <= 0:
                    return
                timer = loop.call_later(delay, self.wake.set)
            self.idle = not self.unreplayed
            self.wake.clear()
            await self.wake.wait()
            self.idle = False
            if timer is not None:
                timer.cancel()

    async def read_group(self) -> ReplayGroup:
        """The next group: what is on disk only first (read in a worker thread), then the
        queued batches that follow it."""
        group = ReplayGroup()
        generation = self.generation
        head = self.queued[0] if self.queued else None
        if self.on_disk:
            end = head.position if head is not None else self.end
            if not await asyncio.to_thread(self.read_disk, group, end):
                return group
            if generation != self.generation:
                # The queue was dropped meanwhile: what followed `end` is on disk now.
                return group
            self.on_disk = False
        while self.queued and group.row_count < self.flush_rows:
            spooled = self.queued.popleft()
            self.queued_rows -= len(spooled.flat.rows)
            group.add(spooled.next_position, spooled.batch, spooled.flat, self.keep_raw_batches)
            # A failover batch may also be in its first-choice replica's spool (ADR 0005).
            if spooled.batch.failover:
                group.uncertain = True
            else:
                group.live_rows += len(spooled.flat.rows)
        return group

    def read_disk(self, group: ReplayGroup, end: Position) -> bool:
        """Add the spooled records from the checkpoint up to `end` (in a worker thread);
        False when the group filled up before `end`."""
        for record in self.spool.read_from(self.spool.checkpoint):
            if record.position >= end:
                return True
            if group.row_count >= self.flush_rows:
                return False
            batch = logs_pb2.LogBatch.FromString(record.payload)
            flat = self.flatten(batch)
            group.add(record.next_position, batch, flat, self.keep_raw_batches)
            if record.position < self.uncertain_before or batch.failover:
                group.uncertain = True
            else:
                group.live_rows += len(flat.rows)
        return True

    def flatten(self, batch: logs_pb2.LogBatch) -> FlatBatch:
        try:
            return flatten_batch(batch)
        except MalformedBatch as exc:
            # Checked before spooling; only a changed parser can get here. Never stall on it.
            log.error("spooled batch %s is unreadable now, not inserted: %s", batch.batch_id, exc)
            return FlatBatch("results")

    async def insert_until_stored(self, group: ReplayGroup) -> bool:
        """Insert the group, retrying with backoff; False if stopped before it was stored.

        One attempt per backoff step (0.1 s doubling to 5 s), whatever is spooled meanwhile,
        and one log line when inserts start failing and one when they work again.
        """
        done: set[str] = set()
        delay = RETRY_FIRST_S
        failures = 0
        failing_since = time.monotonic()
        while True:
            try:
                await asyncio.to_thread(self.insert_group, group, done)
            except Exception as exc:
                metrics.REPLAY_FAILURES.inc()
                if not failures:
                    failing_since = time.monotonic()
                    log.error(
                        "replay of %d batches failed: %s; retrying every %g-%g s until it works",
                        group.records,
                        exc,
                        RETRY_FIRST_S,
                        RETRY_CAP_S,
                    )
                failures += 1
                # The failed insert may have been committed all the same.
                group.uncertain = True
            else:
                if failures:
                    log.info(
                        "replay works again: %d batches stored after %d failed attempts in %.1f s",
                        group.records,
                        failures,
                        time.monotonic() - failing_since,
                    )
                return True
            if self.out_of_time():
                return False
            # Whatever is spooled meanwhile waits for the backoff step too.
            await asyncio.sleep(min(delay, max(0.0, self.give_up_at - time.monotonic())))
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
        present = set()
        for batch_id, count in self.store.stored_batch_rows(table, expected).items():
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
            self.store.insert_rows(table, TABLE_COLUMNS[table], rows)
        except Exception:
            metrics.INSERT_ERRORS.labels(table).inc()
            raise
        finally:
            metrics.INSERT_SECONDS.labels(table).observe(time.monotonic() - started)
        metrics.ROWS_INSERTED.labels(table).inc(len(rows))

    def wait_until_replayed(self, records: int, timeout_s: float) -> None:
        """Block (a worker thread) until `records` spooled records have been replayed."""
        with self.replayed:
            if self.spool.replayed_records >= records:
                return
        self.reader_waiting.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wake.set)
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
