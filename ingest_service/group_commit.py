"""The receive side of ingest: de-duplicate, check, spool with one fsync per group, acknowledge.

The data flow of one batch: receive -> dedup -> flatten check -> spool append+fsync -> ack ->
replay (ingest_service/replay.py) -> insert -> checkpoint.

A batch is acknowledged ok once it is written and fsynced to the spool, because osquery
deletes a batch from its buffer as soon as the gateway reports success; batches that arrive
while one append is being fsynced go into the next append, so a busy ingest pays one fsync per
group, not per batch. A batch that cannot be flattened is refused before it reaches the spool,
so replay never meets poison. Above `ingest_spool_max_bytes` unreplayed bytes new batches are
refused (backpressure: osquery keeps them and retries).

Duplicates (osquery re-sends): a batch id seen recently, or waiting for its append, is not
spooled again. The set of recent ids is rebuilt at start-up from the spool's retained segments,
so the de-duplication window is the spool retention (docs/adr/0004-spool-and-exactly-once.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from ingest_service import metrics
from ingest_service.log_rows import FlatBatch, MalformedBatch, flatten_batch
from ingest_service.replay import Replayer
from ingest_service.spool import Spool
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

# Sends one LogAck back to whoever sent the batch.
Reply = Callable[[logs_pb2.LogAck], Awaitable[None]]

RECENT_BATCH_IDS = 200_000


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
    """The batch ids of every record in the spool's retained segments.

    Mostly read from the segments' id indexes; only records the indexes miss (appended without
    ids, or not indexed before a crash) are parsed.
    """
    recent = RecentBatchIds()
    for batch_id in spool.record_ids(lambda frame: logs_pb2.LogBatch.FromString(frame).batch_id):
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
            positions = await asyncio.to_thread(
                self.spool.append, [w.frame for w in group], [w.batch_id for w in group]
            )
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
