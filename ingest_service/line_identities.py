"""Each node's recent log lines, so a line osquery sends again is stored once.

osquery keeps a line in its buffer until a POST carrying it is answered with success, and
sends it again merged with newer lines when the answer was lost (osquery-protocol.md §7.3).
The gateway gives every line an identity (gateway/log_lines.py); this module remembers, per
node and kind, the lines osquery may still hold, and tells which lines of a new batch were
stored before (docs/adr/0012-line-level-exactly-once.md).

What a batch shows about osquery's buffer: a batch is always the oldest lines osquery holds,
in key order. So when a batch holds a remembered line, every remembered line before the
first one it holds is gone from osquery (deleted after an answer arrived), and the batch
repeats the remembered lines from there on. When it holds none, osquery deleted every
remembered line, and the whole batch is new. (New lines can come before the repeated ones:
osquery's keys `tls_r_<time>_<n>` sort `_100` before `_99` within one second.) Deletion comes
a POST at a time: a remembered line that came in the same POST as an older, now deleted line
cannot still be held, so a batch line with its identity is a genuinely new line identical to
it (two identical status lines split across two flushes, for instance).

The memory per node and kind is the lines osquery may still hold (8 bytes each, at most
MAX_LINES: usually one batch) and, when that differs from one POST, which POSTs carried them.
A node not heard from for `window_s` is forgotten.

Across restarts: a snapshot of the memory (with the spool position it covers) is written now
and then and at shutdown; at start-up it is loaded and the spool's records after that position
are applied again (each spooled record holds its line identities).
"""

from __future__ import annotations

import logging
import struct
import zlib
from array import array
from pathlib import Path
from typing import NamedTuple

from ingest_service.spool import Position, Spool
from protos.v1 import logs_pb2
from quarry.file_writes import write_atomically

log = logging.getLogger(__name__)

# Lines remembered per node and kind: a few of osquery's largest batches
# (--logger_tls_max_lines, 1024); and POSTs remembered, for re-sends cut short.
MAX_LINES = 4096
MAX_POSTS = 16
SNAPSHOT_FILE = "line_ids"
SNAPSHOT_MAGIC = b"QLID2\n"
SNAPSHOT_HEADER = struct.Struct("<QQI")  # segment, offset, entries
ENTRY_HEADER = struct.Struct("<HdII")  # key length, last seen (Unix s), lines, POSTs
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
    """The lines a node may still hold, oldest first, and the POSTs that carried them (empty:
    one POST carried exactly these lines). Replaced, never changed, so a shallow copy of the
    memory is a consistent snapshot."""

    lines: bytes
    posts: tuple[bytes, ...]
    seen_at: float


class LineIdentities:
    """The lines each node sent recently and may send again."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.lines: dict[Key, Remembered] = {}

    def repeated(self, key: Key, ids: array) -> list[bool] | None:
        """For each line of a new batch, whether it was stored before; None: all are new."""
        remembered = self.lines.get(key)
        if remembered is None or not ids:
            return None
        lines = unpack(remembered.lines)
        remembered_ids = set(lines)
        first = next((line_id for line_id in ids if line_id in remembered_ids), None)
        if first is None:
            return None
        start = resend_start(lines, remembered.posts, first)
        if start is None:
            return None
        held = set(lines[start:])
        return [line_id in held for line_id in ids]

    def stored(self, key: Key, ids: array, repeated: list[bool] | None, now: float) -> None:
        """The batch is spooled (its new lines fsynced): remember what osquery now holds."""
        remembered = self.lines.get(key)
        if repeated is None or remembered is None or not any(repeated):
            self.lines[key] = Remembered(ids.tobytes()[-8 * MAX_LINES :], (), now)
            return
        lines = unpack(remembered.lines)
        first = ids[repeated.index(True)]
        if first not in lines:  # only a memory rebuilt from a damaged spool gets here
            self.lines[key] = Remembered(ids.tobytes()[-8 * MAX_LINES :], (), now)
            return
        start = lines.index(first)
        gone = set(lines[:start])
        kept = lines[start:]
        kept.extend(line_id for line_id, seen in zip(ids, repeated, strict=True) if not seen)
        posts = [unpack(post) for post in remembered.posts] or [lines]
        posts = [array("Q", (i for i in post if i not in gone)) for post in posts]
        posts = [post for post in posts if post][-(MAX_POSTS - 1) :]
        posts.append(ids)
        self.lines[key] = Remembered(
            kept[-MAX_LINES:].tobytes(), tuple(post.tobytes() for post in posts), now
        )

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
            if batch.line_ids:
                repeated = [bool(b) for b in batch.repeated_lines] if batch.repeated_lines else None
                self.stored(key_of(batch), ids_of(batch), repeated, record.appended_at)
                applied += 1
        return applied


def resend_start(lines: array, posts: tuple[bytes, ...], first: int) -> int | None:
    """Where in the remembered lines a batch whose first remembered line is `first` takes up;
    None: nowhere, `first` is a new line.

    Every remembered line before that point must be gone from osquery, so a POST that carried
    it, and not `first`, was answered; if none did, `first` is a new line.
    """
    try:
        start = lines.index(first)
    except ValueError:
        return None
    if start == 0:
        return 0
    carried = [set(unpack(post)) for post in posts] or [set(lines)]
    answerable = [post for post in carried if first not in post]
    if all(any(line_id in post for post in answerable) for line_id in lines[:start]):
        return start
    return None


# Snapshots


def write_snapshot(directory: Path, lines: dict[Key, Remembered], position: Position) -> None:
    parts = [SNAPSHOT_MAGIC, SNAPSHOT_HEADER.pack(position.segment, position.offset, len(lines))]
    for key, remembered in lines.items():
        raw_key = key.encode()
        parts.append(
            ENTRY_HEADER.pack(
                len(raw_key), remembered.seen_at, len(remembered.lines), len(remembered.posts)
            )
        )
        parts.append(raw_key)
        parts.append(remembered.lines)
        for post in remembered.posts:
            parts.append(POST_HEADER.pack(len(post)))
            parts.append(post)
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
    for _ in range(entries):
        key_length, seen_at, lines_length, post_count = ENTRY_HEADER.unpack_from(body, offset)
        offset += ENTRY_HEADER.size
        key = body[offset : offset + key_length].decode()
        offset += key_length
        remembered_lines = body[offset : offset + lines_length]
        offset += lines_length
        posts = []
        for _ in range(post_count):
            [length] = POST_HEADER.unpack_from(body, offset)
            offset += POST_HEADER.size
            posts.append(body[offset : offset + length])
            offset += length
        lines[key] = Remembered(remembered_lines, tuple(posts), seen_at)
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
