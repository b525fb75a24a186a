"""Each node's recent log lines, so a line osquery sends again is stored once.

osquery keeps a line in its buffer until a POST carrying it is answered with success, and
sends it again merged with newer lines when the answer was lost (osquery-protocol.md §7.3).
The gateway gives every line an identity (gateway/log_lines.py); this module remembers, per
node and kind, the lines osquery may still hold, and tells which lines of a new batch were
stored before (docs/adr/0012-line-level-exactly-once.md).

What a batch shows about osquery's buffer: a batch is always the oldest lines osquery holds,
in key order. A batch line with the identity of a remembered line repeats it; a remembered
line the batch skips while it holds a later one is gone from osquery (deleted after an
answer arrived); when the batch holds none, osquery deleted them all and the whole batch is
new. osquery deletes a POST's lines together, so every line of a POST that carried a gone
line is gone too, and a batch line with the identity of such a line is a genuinely new
line identical to it (two identical status lines split across two flushes, for instance).
A POST whose lines a later batch repeats went unanswered and is forgotten. New lines can
come before repeated ones: osquery's keys `tls_r_<time>_<n>` sort `_100` before `_99`
within one second.

The memory per node and kind is the lines osquery may still hold (an identity and a number,
16 bytes each, at most MAX_LINES: usually one batch) and, when that differs from one POST,
which POSTs carried them. Identical lines are told apart by their place among the remembered
ones, not by their place in a batch: a re-send cut short by --logger_tls_max_lines can carry
the first of two identical lines and not the second. A node not heard from for `window_s`
is forgotten.

Across restarts: a snapshot of the memory (with the spool position it covers) is written now
and then and at shutdown; at start-up it is loaded and the spool's records after that position
are applied again (each spooled record holds its line identities).
"""

from __future__ import annotations

import logging
import struct
import zlib
from array import array
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ingest_service.spool import Position, Spool
from protos.v1 import logs_pb2
from quarry.runtime.file_writes import write_atomically

log = logging.getLogger(__name__)

# Lines remembered per node and kind: a few of osquery's largest batches
# (--logger_tls_max_lines, 1024); and POSTs remembered, for re-sends cut short.
MAX_LINES = 4096
MAX_POSTS = 16
SNAPSHOT_FILE = "line_ids"
SNAPSHOT_MAGIC = b"QLID3\n"
SNAPSHOT_HEADER = struct.Struct("<QQI")  # segment, offset, entries
# key length, last seen (Unix s), next line number, lines, POSTs
ENTRY_HEADER = struct.Struct("<HdQII")
POST_HEADER = struct.Struct("<I")  # bytes of one POST's ids

Key = str  # f"{kind}:{node_id}"


def key_of(batch: logs_pb2.LogBatch) -> Key:
    return f"{batch.kind}:{batch.node_id}"


def ids_of(batch: logs_pb2.LogBatch) -> array:
    ids = array("Q")
    ids.frombytes(batch.line_ids)
    return ids


def unpack(packed: bytes) -> array:
    ids = array("Q")
    ids.frombytes(packed)
    return ids


class Remembered(NamedTuple):
    """The lines a node may still hold, oldest first: their identities and their numbers
    (per node and kind), and the numbers each remembered POST carried (empty: one POST
    carried exactly these lines). Replaced, never changed, so a shallow copy of the memory
    is a consistent snapshot."""

    ids: bytes
    numbers: bytes
    posts: tuple[bytes, ...]
    next_number: int
    seen_at: float


@dataclass
class Reading:
    """How a batch reads against the memory: which of its lines were stored before (and the
    number of the remembered line each repeats), and which remembered lines osquery no longer
    holds."""

    repeated: list[bool]
    matched: list[int]
    gone: set[int]


class LineIdentities:
    """The lines each node sent recently and may send again."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.lines: dict[Key, Remembered] = {}

    def read(self, key: Key, ids: array) -> Reading | None:
        """Which lines of a new batch were stored before; None: all are new."""
        remembered = self.lines.get(key)
        if remembered is None or not ids:
            return None
        known, numbers = unpack(remembered.ids), unpack(remembered.numbers)
        if set(known).isdisjoint(ids):
            return None
        posts = [unpack(post) for post in remembered.posts] or [numbers]
        gone: set[int] = set()
        while True:
            matched = match_in_order(ids, known, numbers, gone)
            newly_gone = lines_shown_gone(posts, matched, gone)
            if not newly_gone:
                break
            # osquery deletes a POST's lines together: every POST that carried one is answered.
            for post in posts:
                if not newly_gone.isdisjoint(post):
                    gone.update(post)
            gone |= newly_gone
        return Reading([number >= 0 for number in matched], matched, gone)

    def stored(self, key: Key, ids: array, reading: Reading | None, now: float) -> None:
        """The batch is spooled (its new lines fsynced): remember what osquery now holds."""
        remembered = self.lines.get(key)
        first_number = remembered.next_number if remembered is not None else 0
        if reading is None or remembered is None or not any(reading.repeated):
            numbers = array("Q", range(first_number, first_number + len(ids)))
            self.lines[key] = remember(ids, numbers, [], first_number + len(ids), now)
            return
        known, numbers = unpack(remembered.ids), unpack(remembered.numbers)
        kept_ids, kept_numbers = array("Q"), array("Q")
        for line_id, number in zip(known, numbers, strict=True):
            if number not in reading.gone:
                kept_ids.append(line_id)
                kept_numbers.append(number)
        carried = array("Q")
        next_number = first_number
        for line_id, number in zip(ids, reading.matched, strict=True):
            if number < 0:
                kept_ids.append(line_id)
                kept_numbers.append(next_number)
                number, next_number = next_number, next_number + 1
            carried.append(number)
        # A POST whose lines this batch repeats went unanswered, and one whose lines are gone
        # was answered: neither can tell anything any more.
        repeated = {number for number in reading.matched if number >= 0}
        posts = [unpack(post) for post in remembered.posts] or [numbers]
        kept_posts = [
            post
            for post in posts
            if repeated.isdisjoint(post) and not reading.gone.issuperset(post)
        ][-(MAX_POSTS - 1) :]
        kept_posts.append(carried)
        self.lines[key] = remember(kept_ids, kept_numbers, kept_posts, next_number, now)

    def forget_older_than(self, cutoff: float) -> int:
        old = [key for key, remembered in self.lines.items() if remembered.seen_at < cutoff]
        for key in old:
            del self.lines[key]
        return len(old)

    def snapshot(self) -> dict[Key, Remembered]:
        """A copy to write from another thread."""
        return dict(self.lines)

    def apply_spooled(self, spool: Spool, start: Position) -> int:
        """Apply the spooled records from `start` on, as their appends did; returns how many."""
        applied = 0
        for record in spool.read_from(start):
            batch = logs_pb2.LogBatch.FromString(record.payload)
            if not batch.line_ids:
                continue
            key, ids = key_of(batch), ids_of(batch)
            spooled = [bool(b) for b in batch.repeated_lines] or [False] * len(ids)
            reading = self.read(key, ids) if any(spooled) else None
            if reading is not None and reading.repeated != spooled:
                # Only a memory rebuilt without its snapshot reads differently: start afresh.
                reading = None
            self.stored(key, ids, reading, record.appended_at)
            applied += 1
        return applied


def remember(
    ids: array, numbers: array, posts: list[array], next_number: int, now: float
) -> Remembered:
    """The memory of one node and kind, its oldest lines dropped past MAX_LINES."""
    if len(ids) > MAX_LINES:
        dropped = set(numbers[:-MAX_LINES])
        ids, numbers = ids[-MAX_LINES:], numbers[-MAX_LINES:]
        posts = [array("Q", (n for n in post if n not in dropped)) for post in posts]
    one_post_of_all = not posts or (len(posts) == 1 and posts[0] == numbers)
    packed_posts = () if one_post_of_all else tuple(post.tobytes() for post in posts)
    return Remembered(ids.tobytes(), numbers.tobytes(), packed_posts, next_number, now)


def match_in_order(ids: array, known: array, numbers: array, gone: set[int]) -> list[int]:
    """For each line of the batch, the number of the oldest remembered line still held with
    its identity and not matched yet; -1 for a new line."""
    held: dict[int, deque[int]] = {}
    for line_id, number in zip(known, numbers, strict=True):
        if number not in gone:
            held.setdefault(line_id, deque()).append(number)
    matched = []
    for line_id in ids:
        same = held.get(line_id)
        matched.append(same.popleft() if same else -1)
    return matched


def lines_shown_gone(posts: list[array], matched: list[int], gone: set[int]) -> set[int]:
    """Remembered lines the batch skips while it holds a later one: osquery sends its oldest
    lines first, so those are deleted. "Later" in osquery's key order, which a POST shows for
    the lines it carried (the order lines were first stored in is not it: `_100` sorts
    before `_99`)."""
    repeated = {number for number in matched if number >= 0}
    shown: set[int] = set()
    for post in posts:
        held_at = [index for index, number in enumerate(post) if number in repeated]
        if held_at:
            shown.update(n for n in post[: held_at[-1]] if n not in repeated and n not in gone)
    return shown


# Snapshots


def write_snapshot(directory: Path, lines: dict[Key, Remembered], position: Position) -> None:
    parts = [SNAPSHOT_MAGIC, SNAPSHOT_HEADER.pack(position.segment, position.offset, len(lines))]
    for key, remembered in lines.items():
        raw_key = key.encode()
        parts.append(
            ENTRY_HEADER.pack(
                len(raw_key),
                remembered.seen_at,
                remembered.next_number,
                len(remembered.ids) // 8,
                len(remembered.posts),
            )
        )
        parts += [raw_key, remembered.ids, remembered.numbers]
        for post in remembered.posts:
            parts += [POST_HEADER.pack(len(post)), post]
    body = b"".join(parts)
    write_atomically(directory / SNAPSHOT_FILE, body + struct.pack("<I", zlib.crc32(body)))


def read_snapshot(directory: Path) -> tuple[dict[Key, Remembered], Position] | None:
    """The snapshot and the spool position it covers; None if absent or damaged."""
    try:
        data = (directory / SNAPSHOT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    body, trailer = data[:-4], data[-4:]
    if not body.startswith(SNAPSHOT_MAGIC) or struct.pack("<I", zlib.crc32(body)) != trailer:
        log.warning("line identity snapshot in %s is damaged: rebuilding from the spool", directory)
        return None
    offset = len(SNAPSHOT_MAGIC)
    segment, position_offset, entries = SNAPSHOT_HEADER.unpack_from(body, offset)
    offset += SNAPSHOT_HEADER.size
    lines: dict[Key, Remembered] = {}

    def take(length: int) -> bytes:
        nonlocal offset
        offset += length
        return body[offset - length : offset]

    for _ in range(entries):
        key_length, seen_at, next_number, count, post_count = ENTRY_HEADER.unpack_from(body, offset)
        offset += ENTRY_HEADER.size
        key = take(key_length).decode()
        ids, numbers = take(8 * count), take(8 * count)
        posts = []
        for _ in range(post_count):
            [length] = POST_HEADER.unpack_from(body, offset)
            offset += POST_HEADER.size
            posts.append(take(length))
        lines[key] = Remembered(ids, numbers, tuple(posts), next_number, seen_at)
    return lines, Position(segment, position_offset)


def load(spool: Spool, window_s: float) -> LineIdentities:
    """The memory as it was when the last process stopped (or died)."""
    identities = LineIdentities(window_s)
    snapshot = read_snapshot(spool.directory)
    start = Position(0, 0)
    if snapshot is not None:
        identities.lines, start = snapshot
    applied = identities.apply_spooled(spool, start)
    log.info(
        "line identities: %d nodes and kinds from the snapshot, %d spooled batches applied",
        len(snapshot[0]) if snapshot else 0,
        applied,
    )
    return identities
