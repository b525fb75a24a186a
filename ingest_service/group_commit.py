"""The receive side of ingest: de-duplicate, check, spool with one fsync per group, acknowledge.

The data flow of one batch: receive -> dedup (batch, then line) -> flatten check -> spool
append+fsync -> ack -> replay (ingest_service/replay.py) -> insert -> checkpoint.

A batch is acknowledged ok once it is written and fsynced to the spool, because osquery
deletes a batch from its buffer as soon as the gateway reports success; batches that arrive
while one append is being fsynced go into the next append, so a busy ingest pays one fsync per
group, not per batch. A batch that cannot be flattened is refused before it reaches the spool,
so replay never meets poison. Above `ingest_spool_max_bytes` unreplayed bytes new batches are
refused (backpressure: osquery keeps them and retries).

Duplicates (osquery re-sends): a batch id seen recently, or waiting for its append, is not
spooled again. The set of recent ids is rebuilt at start-up from the spool's retained segments,
so the de-duplication window is the spool retention (docs/adr/0004-spool-and-exactly-once.md).
Lines osquery re-sends merged into a new batch are recognised by their identities and left
out of the spooled copy (ingest_service/line_identities.py,
docs/adr/0012-line-level-exactly-once.md). A node's batches of one kind are taken one at a
time: a batch arriving while an earlier one of the same node and kind waits for its append
(osquery gave up on it and sent its lines again) is looked at only once that append is over,
so it is compared with what was really stored. A batch that arrives after its gateway stopped
waiting for the ack is dropped unstored: the gateway has answered osquery with an error, so
osquery still holds those lines and sends them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from google.protobuf.message import DecodeError

from ingest_service import line_identities, metrics
from ingest_service.line_identities import LineIdentities, Reading, ids_of, key_of
from ingest_service.log_rows import FlatBatch, MalformedBatch, flatten_batch, parse_records
from ingest_service.replay import Replayer
from ingest_service.spool import Spool
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

# Sends one LogAck back to whoever sent the batch.
Reply = Callable[[logs_pb2.LogAck], Awaitable[None]]

RECENT_BATCH_IDS = 200_000
# How often the line identities are written to disk (and at shutdown): after a crash, the
# spooled batches since the last snapshot are applied again at start-up.
SNAPSHOT_INTERVAL_S = 30.0
# A batch is dropped as expired only this long after its gateway stopped waiting, so a
# little clock skew between hosts never drops a batch the gateway still waits for.
EXPIRY_GRACE_MS = 1_000


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
    # Line identities: the node and kind, every line's id, how they read against the memory.
    line_key: str = ""
    line_ids: array = field(default_factory=lambda: array("Q"))
    reading: Reading | None = None

    @property
    def repeated_lines(self) -> int:
        return sum(self.reading.repeated) if self.reading else 0


@dataclass
class HeldBatch:
    """A batch that waits until the append of an earlier one of its node and kind is over."""

    batch: logs_pb2.LogBatch
    frame: bytes
    reply: Reply


class GroupCommitter:
    """Takes raw LogBatch frames, spools them in groups, and replies with a LogAck each."""

    def __init__(
        self,
        spool: Spool,
        replayer: Replayer,
        max_unreplayed_bytes: int,
        recent: RecentBatchIds,
        lines: LineIdentities,
    ) -> None:
        self.spool = spool
        self.replayer = replayer
        self.max_unreplayed_bytes = max_unreplayed_bytes
        self.recent = recent
        self.lines = lines
        self.last_snapshot = time.monotonic()
        # Every batch_id received and not yet acked.
        self.unsettled: dict[str, WaitingBatch] = {}
        # Per node and kind with a batch waiting for its append: the batches held behind it.
        self.held: dict[str, list[HeldBatch]] = {}
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
        if batch.answer_by_ms and time.time() * 1000 > batch.answer_by_ms + EXPIRY_GRACE_MS:
            metrics.BATCHES.labels("expired").inc()
            error = "arrived after the gateway stopped waiting for it: not stored"
            await reply(logs_pb2.LogAck(batch_id=batch.batch_id, ok=False, error=error))
            return
        await self.admit(HeldBatch(batch, frame, reply))

    async def admit(self, held: HeldBatch) -> None:
        """Check the batch, leave out lines stored before, and queue it for the next append."""
        batch, frame, reply = held.batch, held.frame, held.reply
        # Duplicates first: a re-sent batch costs no parsing.
        if batch.batch_id in self.unsettled:
            self.unsettled[batch.batch_id].duplicate_replies.append(reply)
            metrics.DUPLICATES.inc()
            return
        if batch.batch_id and batch.batch_id in self.recent:
            await self.ack_duplicate(batch.batch_id, reply)
            return
        waiting_key = key_of(batch) if batch.line_ids else ""
        if waiting_key in self.held:
            self.held[waiting_key].append(held)
            return
        ids = ids_of(batch)
        reading = self.lines.read(waiting_key, ids) if waiting_key else None
        try:
            if reading is not None and any(reading.repeated):
                batch = without_repeated_lines(batch, ids, reading.repeated)
                frame = batch.SerializeToString()
            flat = flatten_batch(batch)
        except MalformedBatch as exc:
            await self.reject(batch.batch_id, f"unreadable log batch: {exc}", reply)
            return
        metrics.SKIPPED_RECORDS.inc(flat.skipped_records)
        waiting = WaitingBatch(
            batch.batch_id,
            frame,
            flat,
            reply,
            line_key=waiting_key,
            line_ids=ids,
            reading=reading,
        )
        if not flat.rows and not waiting.repeated_lines:
            # Nothing to store (an empty snapshot): stored, trivially.
            self.remember(batch.batch_id)
            self.lines_stored(waiting)
            metrics.BATCHES.labels("stored").inc()
            await reply(self.ok_ack(waiting))
            return
        unreplayed = self.spool.unreplayed_bytes()
        if unreplayed > self.max_unreplayed_bytes:
            metrics.SPOOL_FULL_REFUSALS.inc()
            error = f"ingest spool full ({unreplayed} bytes unreplayed): retry later"
            await self.refuse(batch.batch_id, error, reply)
            return
        self.add_waiting(waiting)

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

    def ok_ack(self, waiting: WaitingBatch) -> logs_pb2.LogAck:
        return logs_pb2.LogAck(
            batch_id=waiting.batch_id,
            ok=True,
            rows=len(waiting.flat.rows),
            # Every line stored before: to osquery as to the metrics, a duplicate.
            duplicate=waiting.reading is not None and all(waiting.reading.repeated),
            lines_already_stored=waiting.repeated_lines,
        )

    def lines_stored(self, waiting: WaitingBatch) -> None:
        if waiting.line_key:
            metrics.REPEATED_LINES.inc(waiting.repeated_lines)
            self.lines.stored(waiting.line_key, waiting.line_ids, waiting.reading, time.time())

    def remember(self, batch_id: str) -> None:
        if batch_id:
            self.recent.add(batch_id)

    def add_waiting(self, waiting: WaitingBatch) -> None:
        if waiting.batch_id:
            self.unsettled[waiting.batch_id] = waiting
        if waiting.line_key:
            self.held[waiting.line_key] = []
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
                await self.write_snapshot()
                return
            group, self.waiting = self.waiting, []
            await self.append_group(group)
            if time.monotonic() - self.last_snapshot >= SNAPSHOT_INTERVAL_S:
                await self.write_snapshot()

    async def write_snapshot(self) -> None:
        """Write the line identities and the spool position they cover; forget idle nodes.

        Between two groups every spooled record is applied, so the position is exact.
        """
        self.last_snapshot = time.monotonic()
        self.lines.forget_older_than(time.time() - self.lines.window_s)
        position = self.spool.end_position()
        lines = self.lines.snapshot()
        metrics.REMEMBERED_LINE_SETS.set(len(lines))
        try:
            await asyncio.to_thread(
                line_identities.write_snapshot, self.spool.directory, lines, position
            )
        except OSError as exc:
            log.error("cannot write the line identity snapshot (will retry): %s", exc)

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
        held = self.held.pop(waiting.line_key, []) if waiting.line_key else []
        if error:
            metrics.BATCHES.labels("failed").inc(1 + len(waiting.duplicate_replies))
            ack = logs_pb2.LogAck(batch_id=waiting.batch_id, ok=False, error=error)
            for reply in (waiting.reply, *waiting.duplicate_replies):
                await reply(ack)
        else:
            self.remember(waiting.batch_id)
            self.lines_stored(waiting)
            metrics.BATCHES.labels("stored").inc()
            await waiting.reply(self.ok_ack(waiting))
            for reply in waiting.duplicate_replies:
                metrics.BATCHES.labels("duplicate").inc()
                await reply(logs_pb2.LogAck(batch_id=waiting.batch_id, ok=True, duplicate=True))
        # The batches held behind this one, in arrival order (each may be held again).
        for later in held:
            await self.admit(later)


def without_repeated_lines(
    batch: logs_pb2.LogBatch, ids: array, repeated: list[bool]
) -> logs_pb2.LogBatch:
    """A copy of the batch holding only its new lines in data_json: what is spooled."""
    records = parse_records(batch.data_json)
    if len(records) != len(ids):
        raise MalformedBatch(f"{len(ids)} line ids for {len(records)} lines")
    kept = logs_pb2.LogBatch()
    kept.CopyFrom(batch)
    kept.data_json = orjson.dumps(
        [record for record, seen in zip(records, repeated, strict=True) if not seen]
    )
    kept.repeated_lines = bytes(repeated)
    return kept
