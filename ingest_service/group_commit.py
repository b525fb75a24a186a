"""The receive side of ingest: de-duplicate, check, spool with one fsync per group, acknowledge.

The data flow of one batch: receive (ingest_service/server.py) -> parse, dedup (batch, then
line: ingest_service/line_identities.py) -> flatten -> spool append+fsync (ingest_service/
spool.py) -> ack, and the batch handed to the replay (ingest_service/replay.py, which owns it
from then on) -> insert -> checkpoint. Each frame is parsed and flattened once here; the replay
takes the parsed batch and its rows as they are.

A batch is acknowledged ok once it is written and fsynced to the spool, because osquery
deletes a batch from its buffer as soon as the gateway reports success. Every batch admitted in
one event-loop turn joins one append (one write, one fsync, one hand-off to the appending
thread and one back), and batches that arrive while an append is being fsynced go into the
next one, so a busy ingest pays one fsync and two thread wake-ups per group, not per batch.
A batch that cannot be flattened is refused before it reaches the spool, so replay never
meets poison. Above `ingest_spool_max_bytes` unreplayed bytes new batches are
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
import queue
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from ingest_service import line_identities, metrics
from ingest_service.line_identities import LineIdentities, Reading, ids_of, key_of
from ingest_service.log_rows import FlatBatch, MalformedBatch, flatten_batch, parse_records
from ingest_service.replay import Replayer, SpooledBatch
from ingest_service.spool import Position, Spool
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)

# Sends one LogAck back to whoever sent the batch (queued; it leaves at the end of the turn).
Reply = Callable[[logs_pb2.LogAck], None]

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

    batch: logs_pb2.LogBatch
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
    def batch_id(self) -> str:
        return self.batch.batch_id

    @property
    def repeated_lines(self) -> int:
        return sum(self.reading.repeated) if self.reading else 0


@dataclass
class HeldBatch:
    """A batch that waits until the append of an earlier one of its node and kind is over."""

    batch: logs_pb2.LogBatch
    frame: bytes
    reply: Reply


# What an append gives back on the event loop: where each record starts and where the last
# one ends, or why it failed.
Appended = tuple[list[Position], Position] | Exception


class AppendThread:
    """The one thread that writes and fsyncs spool appends, off the event loop.

    A long-lived thread and a queue rather than a worker pool per append: one wake-up each
    way per group, without the futures and callbacks of `asyncio.to_thread`.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=self.run, name="spool-append", daemon=True)
        self.thread.start()

    def append(self, frames: list[bytes], ids: list[str], done: Callable[[Appended], None]) -> None:
        """Append in the thread; `done` is then called on the event loop."""
        self.requests.put((frames, ids, done))

    def run(self) -> None:
        assert self.loop is not None
        while (request := self.requests.get()) is not None:
            frames, ids, done = request
            result: Appended
            try:
                positions = self.spool.append(frames, ids)
                result = (positions, self.spool.end_position())
            except Exception as exc:
                result = exc
            self.loop.call_soon_threadsafe(done, result)

    def stop(self) -> None:
        if self.thread is not None:
            self.requests.put(None)
            self.thread.join()


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
        self.appender = AppendThread(spool)
        self.last_snapshot = time.monotonic()
        self.snapshot_writing: asyncio.Task | None = None
        # Every batch_id received and not yet acked.
        self.unsettled: dict[str, WaitingBatch] = {}
        # Per node and kind with a batch waiting for its append: the batches held behind it.
        self.held: dict[str, list[HeldBatch]] = {}
        # Admitted for the next append; the group being appended (None: no append running).
        self.waiting: list[WaitingBatch] = []
        self.appending: list[WaitingBatch] | None = None
        self.append_scheduled = False
        # Set whenever nothing waits and no append runs.
        self.drained = asyncio.Event()
        self.drained.set()

    def start(self) -> None:
        self.appender.start(asyncio.get_running_loop())

    def submit(self, frame: bytes, reply: Reply) -> None:
        """Accept one LogBatch frame; its ack is sent now (error, duplicate) or after the fsync."""
        try:
            batch = logs_pb2.LogBatch.FromString(frame)
        except DecodeError as exc:
            error = f"frame is not a LogBatch protobuf ({len(frame)} bytes): {exc}"
            self.reject("", error, reply)
            return
        if batch.answer_by_ms and time.time() * 1000 > batch.answer_by_ms + EXPIRY_GRACE_MS:
            metrics.BATCHES_EXPIRED.inc()
            error = "arrived after the gateway stopped waiting for it: not stored"
            reply(logs_pb2.LogAck(batch_id=batch.batch_id, ok=False, error=error))
            return
        self.admit(HeldBatch(batch, frame, reply))

    def admit(self, held: HeldBatch) -> None:
        """Check the batch, leave out lines stored before, and queue it for the next append."""
        batch, frame, reply = held.batch, held.frame, held.reply
        # Duplicates first: a re-sent batch costs no flattening.
        if batch.batch_id in self.unsettled:
            self.unsettled[batch.batch_id].duplicate_replies.append(reply)
            metrics.DUPLICATES.inc()
            return
        if batch.batch_id and batch.batch_id in self.recent:
            self.ack_duplicate(batch.batch_id, reply)
            return
        waiting_key = key_of(batch) if batch.line_ids else ""
        if waiting_key in self.held:
            self.held[waiting_key].append(held)
            return
        ids = ids_of(batch)
        reading = self.lines.read(waiting_key, ids) if waiting_key else None
        try:
            if reading is not None and any(reading.repeated):
                batch, records = without_repeated_lines(batch, ids, reading.repeated)
                frame = batch.SerializeToString()
                flat = flatten_batch(batch, records)
            else:
                flat = flatten_batch(batch)
        except MalformedBatch as exc:
            self.reject(batch.batch_id, f"unreadable log batch: {exc}", reply)
            return
        if flat.skipped_records:
            metrics.SKIPPED_RECORDS.inc(flat.skipped_records)
        waiting = WaitingBatch(
            batch, frame, flat, reply, line_key=waiting_key, line_ids=ids, reading=reading
        )
        if not flat.rows and not waiting.repeated_lines:
            # Nothing to store (an empty snapshot): stored, trivially.
            self.remember(batch.batch_id)
            self.lines_stored(waiting)
            metrics.BATCHES_STORED.inc()
            reply(self.ok_ack(waiting))
            return
        unreplayed = self.spool.unreplayed_bytes()
        if unreplayed > self.max_unreplayed_bytes:
            metrics.SPOOL_FULL_REFUSALS.inc()
            error = f"ingest spool full ({unreplayed} bytes unreplayed): retry later"
            self.refuse(batch.batch_id, error, reply)
            return
        self.add_waiting(waiting)

    def reject(self, batch_id: str, error: str, reply: Reply) -> None:
        log.warning("rejected batch %s: %s", batch_id or "?", error)
        metrics.BATCHES_REJECTED.inc()
        reply(logs_pb2.LogAck(batch_id=batch_id, ok=False, error=error))

    def refuse(self, batch_id: str, error: str, reply: Reply) -> None:
        metrics.BATCHES_FAILED.inc()
        reply(logs_pb2.LogAck(batch_id=batch_id, ok=False, error=error))

    def ack_duplicate(self, batch_id: str, reply: Reply) -> None:
        metrics.DUPLICATES.inc()
        metrics.BATCHES_DUPLICATE.inc()
        reply(logs_pb2.LogAck(batch_id=batch_id, ok=True, duplicate=True))

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
            if waiting.reading is not None:
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
        self.drained.clear()
        if self.appending is None and not self.append_scheduled:
            # At the end of this turn, so every batch of the turn joins the same append.
            self.append_scheduled = True
            asyncio.get_running_loop().call_soon(self.start_append)

    def start_append(self) -> None:
        self.append_scheduled = False
        if self.appending is not None or not self.waiting:
            return
        group, self.waiting = self.waiting, []
        self.appending = group
        self.appender.append([w.frame for w in group], [w.batch_id for w in group], self.appended)

    def appended(self, result: Appended) -> None:
        """On the event loop, once the group's append is over: ack, hand over, go on."""
        group, self.appending = self.appending or [], None
        if isinstance(result, Exception):
            log.error("spool append of %d batches failed: %s", len(group), result)
            for waiting in group:
                self.settle(waiting, f"ingest spool write failed: {result}")
        else:
            positions, end = result
            ends = [*positions[1:], end]
            self.replayer.spooled(
                [
                    SpooledBatch(position, next_position, w.batch, w.flat)
                    for position, next_position, w in zip(positions, ends, group, strict=True)
                ]
            )
            for waiting in group:
                self.settle(waiting, "")
        # Between two appends every spooled record is applied to the line identities.
        if time.monotonic() - self.last_snapshot >= SNAPSHOT_INTERVAL_S:
            self.start_snapshot()
        if self.waiting:
            self.start_append()
        else:
            self.drained.set()

    def settle(self, waiting: WaitingBatch, error: str) -> None:
        self.unsettled.pop(waiting.batch_id, None)
        metrics.UNSETTLED_BATCHES.dec()
        held = self.held.pop(waiting.line_key, []) if waiting.line_key else []
        if error:
            metrics.BATCHES_FAILED.inc(1 + len(waiting.duplicate_replies))
            ack = logs_pb2.LogAck(batch_id=waiting.batch_id, ok=False, error=error)
            for reply in (waiting.reply, *waiting.duplicate_replies):
                reply(ack)
        else:
            self.remember(waiting.batch_id)
            self.lines_stored(waiting)
            metrics.BATCHES_STORED.inc()
            waiting.reply(self.ok_ack(waiting))
            for reply in waiting.duplicate_replies:
                metrics.BATCHES_DUPLICATE.inc()
                reply(logs_pb2.LogAck(batch_id=waiting.batch_id, ok=True, duplicate=True))
        # The batches held behind this one, in arrival order (each may be held again).
        for later in held:
            self.admit(later)

    def start_snapshot(self) -> None:
        """Write the line identities and the spool position they cover, in a worker thread;
        forget idle nodes. Called between two appends, so the position is exact."""
        if self.snapshot_writing is not None and not self.snapshot_writing.done():
            return
        self.last_snapshot = time.monotonic()
        self.lines.forget_older_than(time.time() - self.lines.window_s)
        position = self.spool.end_position()
        lines = self.lines.snapshot()
        metrics.REMEMBERED_LINE_SETS.set(len(lines))
        self.snapshot_writing = asyncio.get_running_loop().create_task(
            write_snapshot(self.spool, lines, position)
        )

    async def close(self) -> None:
        """Spool and ack what was admitted, write a last snapshot, stop the appending thread."""
        while not self.drained.is_set():
            await self.drained.wait()
        if self.snapshot_writing is not None:
            await self.snapshot_writing
        self.last_snapshot = 0.0
        self.start_snapshot()
        if self.snapshot_writing is not None:
            await self.snapshot_writing
        self.appender.stop()


async def write_snapshot(
    spool: Spool, lines: dict[line_identities.Key, line_identities.Remembered], position: Position
) -> None:
    try:
        await asyncio.to_thread(line_identities.write_snapshot, spool.directory, lines, position)
    except OSError as exc:
        log.error("cannot write the line identity snapshot (will retry): %s", exc)


def without_repeated_lines(
    batch: logs_pb2.LogBatch, ids: array, repeated: list[bool]
) -> tuple[logs_pb2.LogBatch, list[Any]]:
    """A copy of the batch holding only its new lines in data_json (what is spooled), and
    those lines parsed (to flatten without parsing them again)."""
    records = parse_records(batch.data_json)
    if len(records) != len(ids):
        raise MalformedBatch(f"{len(ids)} line ids for {len(records)} lines")
    new_records = [record for record, seen in zip(records, repeated, strict=True) if not seen]
    kept = logs_pb2.LogBatch()
    kept.CopyFrom(batch)
    kept.data_json = orjson.dumps(new_records)
    kept.repeated_lines = bytes(repeated)
    return kept, new_records
