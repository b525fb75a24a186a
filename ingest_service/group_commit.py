"""Group commit: batches that arrive together are inserted together, then acknowledged.

A batch is acknowledged ok only after the insert holding its rows has returned, because
osquery deletes a batch from its buffer as soon as the gateway reports success. Batches
collect in a pending group until it holds `flush_rows` rows or `flush_interval_s` has passed
since the previous insert began (so an idle store takes a lone batch at once, and a busy
one gets at most one insert per interval, which keeps ClickHouse's part count low); one
writer then inserts the group (one insert per table, in a worker
thread so receiving goes on) while the next group fills.

Duplicates (osquery re-sends): a batch_id stored recently, or still pending or being
inserted, is not inserted again. The memory of stored ids is a bounded LRU, so it does not
survive a restart; durable exactly-once is the later log-pipeline work (see
docs/adr/0002-log-acknowledgement.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from ingest_service import metrics
from ingest_service.log_rows import FlatBatch, MalformedBatch, Row, flatten_batch
from ingest_service.log_store import LogStore
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

# Sends one LogAck back to whoever sent the batch.
Reply = Callable[[logs_pb2.LogAck], Awaitable[None]]

RECENT_BATCH_IDS = 200_000


@dataclass
class PendingBatch:
    """One batch waiting for its insert, and everyone waiting for its ack."""

    batch_id: str
    flat: FlatBatch
    reply: Reply
    # Copies of the same batch that arrived while this one was unsettled.
    duplicate_replies: list[Reply] = field(default_factory=list)


@dataclass
class Group:
    batches: list[PendingBatch] = field(default_factory=list)
    rows: int = 0


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


class GroupCommitter:
    """Takes raw LogBatch frames, stores them in groups, and replies with a LogAck each."""

    def __init__(self, store: LogStore, flush_rows: int, flush_interval_s: float) -> None:
        self.store = store
        self.flush_rows = max(1, flush_rows)
        self.flush_interval_s = flush_interval_s
        self.recent = RecentBatchIds()
        # Every batch_id received and not yet acked, pending or being inserted.
        self.unsettled: dict[str, PendingBatch] = {}
        self.pending = Group()
        self.wake = asyncio.Event()
        self.stopping = False
        self.schema_ready = False
        # When the last group was taken; inserts are spaced at least flush_interval_s apart.
        self.last_flush = time.monotonic()

    async def submit(self, frame: bytes, reply: Reply) -> None:
        """Accept one LogBatch frame; its ack is sent now (error, duplicate) or after insert."""
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
        self.add_pending(PendingBatch(batch.batch_id, flat, reply))

    async def reject(self, batch_id: str, error: str, reply: Reply) -> None:
        log.warning("rejected batch %s: %s", batch_id or "?", error)
        metrics.BATCHES.labels("rejected").inc()
        await reply(logs_pb2.LogAck(batch_id=batch_id, ok=False, error=error))

    async def ack_duplicate(self, batch_id: str, reply: Reply) -> None:
        metrics.DUPLICATES.inc()
        metrics.BATCHES.labels("duplicate").inc()
        await reply(logs_pb2.LogAck(batch_id=batch_id, ok=True, duplicate=True))

    def remember(self, batch_id: str) -> None:
        if batch_id:
            self.recent.add(batch_id)

    def add_pending(self, pending: PendingBatch) -> None:
        if not self.pending.batches:
            self.wake.set()
        if pending.batch_id:
            self.unsettled[pending.batch_id] = pending
        self.pending.batches.append(pending)
        self.pending.rows += len(pending.flat.rows)
        metrics.UNSETTLED_BATCHES.inc()
        metrics.PENDING_ROWS.set(self.pending.rows)
        if self.pending.rows >= self.flush_rows:
            self.wake.set()

    # The writer

    async def run(self) -> None:
        """Insert groups one after another until stop() and nothing is left pending."""
        while True:
            await self.wait_for_group()
            if not self.pending.batches:
                return  # stopping, and everything is written
            group, self.pending = self.pending, Group()
            self.last_flush = time.monotonic()
            metrics.PENDING_ROWS.set(0)
            await self.write_group(group)

    def stop(self) -> None:
        """Flush what is pending without waiting for the interval, then let run() return."""
        self.stopping = True
        self.wake.set()

    async def wait_for_group(self) -> None:
        while not self.stopping and self.pending.rows < self.flush_rows:
            timeout = None
            if self.pending.batches:
                timeout = self.last_flush + self.flush_interval_s - time.monotonic()
                if timeout <= 0:
                    return
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    async def write_group(self, group: Group) -> None:
        by_table: dict[str, list[PendingBatch]] = {}
        for pending in group.batches:
            by_table.setdefault(pending.flat.table, []).append(pending)
        for table, batches in by_table.items():
            error = await self.insert(table, [row for b in batches for row in b.flat.rows])
            for pending in batches:
                await self.settle(pending, error)

    async def insert(self, table: str, rows: list[Row]) -> str:
        """Insert in a worker thread; the error text, or "" once the rows are stored."""
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.insert_blocking, table, rows)
        except Exception as exc:
            metrics.INSERT_ERRORS.labels(table).inc()
            log.error("insert of %d rows into %s failed: %s", len(rows), table, exc)
            return f"log store insert into {table} failed: {exc}"
        finally:
            metrics.INSERT_SECONDS.labels(table).observe(time.monotonic() - started)
        metrics.ROWS_INSERTED.labels(table).inc(len(rows))
        return ""

    def insert_blocking(self, table: str, rows: list[Row]) -> None:
        # The server may have been down at start-up: create the schema on first success.
        if not self.schema_ready:
            self.store.ensure_schema()
            self.schema_ready = True
        self.store.insert_rows(table, rows)

    async def settle(self, pending: PendingBatch, error: str) -> None:
        self.unsettled.pop(pending.batch_id, None)
        metrics.UNSETTLED_BATCHES.dec()
        if error:
            metrics.BATCHES.labels("failed").inc(1 + len(pending.duplicate_replies))
            ack = logs_pb2.LogAck(batch_id=pending.batch_id, ok=False, error=error)
            for reply in (pending.reply, *pending.duplicate_replies):
                await reply(ack)
            return
        self.remember(pending.batch_id)
        metrics.BATCHES.labels("stored").inc()
        rows = len(pending.flat.rows)
        await pending.reply(logs_pb2.LogAck(batch_id=pending.batch_id, ok=True, rows=rows))
        for reply in pending.duplicate_replies:
            metrics.BATCHES.labels("duplicate").inc()
            await reply(logs_pb2.LogAck(batch_id=pending.batch_id, ok=True, duplicate=True))
