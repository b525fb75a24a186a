"""The ingest spool: an append-only, fsynced log of LogBatches not yet known to be in ClickHouse.

A batch is acknowledged to osquery once it is here (see docs/adr/0004-spool-and-exactly-once.md).
The spool is a directory of segment files, `<number>.seg`, each a run of records:

    length (4 bytes) | crc32 (4) | appended_at_ms (8) | LogBatch protobuf (length bytes)

all big-endian; the crc covers appended_at_ms and the payload. `append()` writes a whole group
and fsyncs once. The file `checkpoint` holds the position up to which records are confirmed
inserted; it is replaced atomically (write, fsync, rename). A record cut short by a crash (short
or bad crc) ends its segment: it was never acknowledged, so recovery truncates it.

Fully replayed segments stay for `retention_s` so that a restarted process can remember which
batch ids it has seen (the de-duplication window), then they are deleted.

So that remembering costs a read per id rather than per byte, each segment has an id index,
`<number>.ids`, with one entry per record whose id the caller passed to `append()`:

    crc32 (4 bytes) | id length (4) | record start (8) | record end (8) | id (utf-8)

all big-endian; the crc covers the rest of the entry. An entry is written only after its record
is fsynced, and the index itself is never fsynced: it is a cache of the segment. `record_ids()`
trusts a segment's index up to its first torn, corrupt or non-contiguous entry (or one past the
end of the segment) and reads the records after that point from the segment itself.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest_service import metrics

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIQ")
# Far above any LogBatch the gateway sends (1024 lines of up to 1 MiB): a larger length is a
# corrupt header, not a record.
MAX_RECORD_BYTES = 2**31
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".ids"
INDEX_CRC = struct.Struct(">I")
INDEX_FIELDS = struct.Struct(">IQQ")
INDEX_ENTRY_HEADER = INDEX_CRC.size + INDEX_FIELDS.size
CHECKPOINT_FILE = "checkpoint"


@dataclass(frozen=True, order=True)
class Position:
    """Where a record starts: segment number, byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class SpoolRecord:
    position: Position
    next_position: Position
    appended_at: float  # Unix seconds
    payload: bytes


class Spool:
    """Segments under `directory`; safe for one appender thread and one replayer thread."""

    def __init__(self, directory: Path, segment_bytes: int, retention_s: float) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.retention_s = retention_s
        self.lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.load_checkpoint()
        # Size of every segment on disk, by number; the last one is appended to.
        self.sizes: dict[int, int] = {}
        self.recover()
        # Records appended (or found unreplayed at start) and records replayed, since start.
        self.appended_records = 0
        self.replayed_records = 0
        self.oldest_unreplayed_at: float | None = None
        for record in self.read_from(self.checkpoint):
            self.appended_records += 1
            if self.oldest_unreplayed_at is None:
                self.oldest_unreplayed_at = record.appended_at
        self.active = max([*self.sizes, self.checkpoint.segment]) + 1
        self.active_fd = self.create_segment(self.active)
        # None once a write to the index failed: the rest of the segment is then read instead.
        self.index_fd: int | None = self.create_index(self.active)

    # Start-up

    def load_checkpoint(self) -> Position:
        try:
            segment, offset = (self.directory / CHECKPOINT_FILE).read_text().split()
        except FileNotFoundError:
            return Position(0, 0)
        return Position(int(segment), int(offset))

    def recover(self) -> None:
        """Learn the segments' sizes; cut a torn record off the end of the last one."""
        numbers = sorted(
            int(path.stem)
            for path in self.directory.glob(f"*{SEGMENT_SUFFIX}")
            if path.stem.isdigit()
        )
        for number in numbers:
            self.sizes[number] = self.segment_path(number).stat().st_size
        self.delete_orphaned_indexes()
        if not numbers:
            return
        last = numbers[-1]
        valid_end = 0
        for record in self.read_segment(last, 0, self.sizes[last]):
            valid_end = record.next_position.offset
        if valid_end < self.sizes[last]:
            log.warning(
                "spool segment %d: dropping %d bytes of a torn record at offset %d",
                last,
                self.sizes[last] - valid_end,
                valid_end,
            )
            os.truncate(self.segment_path(last), valid_end)
            self.sizes[last] = valid_end

    def delete_orphaned_indexes(self) -> None:
        """Indexes whose segment is gone (a crash between deleting the two files)."""
        for path in self.directory.glob(f"*{INDEX_SUFFIX}"):
            if path.stem.isdigit() and int(path.stem) not in self.sizes:
                path.unlink()

    # Appending

    def append(self, payloads: list[bytes], ids: list[str] | None = None) -> list[Position]:
        """Write the payloads as records and fsync once; returns where each record starts.

        `ids` (one per payload, "" for none) go to the segment's id index for `record_ids()`;
        without them those records are read back in full at the next start.

        Called from one thread at a time. The lock is not held while writing, so the event
        loop can read the accounting during an fsync.
        """
        if ids is not None and len(ids) != len(payloads):
            raise ValueError(f"append got {len(ids)} ids for {len(payloads)} payloads")
        if self.sizes[self.active] >= self.segment_bytes:
            with self.lock:
                self.rotate()
        start = self.sizes[self.active]
        now = time.time()
        frames, positions, offset = [], [], start
        for payload in payloads:
            positions.append(Position(self.active, offset))
            frame = encode_record(payload, now)
            frames.append(frame)
            offset += len(frame)
        self.write_durably(b"".join(frames), start)
        if ids is not None:
            self.write_index(ids, positions, offset)
        with self.lock:
            self.sizes[self.active] = offset
            if self.appended_records == self.replayed_records:
                self.oldest_unreplayed_at = now
            self.appended_records += len(payloads)
        metrics.SPOOL_APPENDS.inc(len(payloads))
        return positions

    def write_durably(self, data: bytes, start: int) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.active_fd, view) :]
            started = time.monotonic()
            os.fsync(self.active_fd)
            metrics.SPOOL_FSYNC_SECONDS.observe(time.monotonic() - started)
        except OSError:
            # Leave no half-written record for the next group to follow.
            os.ftruncate(self.active_fd, start)
            raise

    def write_index(self, ids: list[str], positions: list[Position], end: int) -> None:
        """Index the records just fsynced; a failure only costs a longer read at the next start."""
        if self.index_fd is None:
            return
        ends = [position.offset for position in positions[1:]] + [end]
        entries = b"".join(
            encode_index_entry(batch_id, position.offset, record_end)
            for batch_id, position, record_end in zip(ids, positions, ends, strict=True)
        )
        try:
            view = memoryview(entries)
            while view:
                view = view[os.write(self.index_fd, view) :]
        except OSError as exc:
            # A part-written entry fails its crc, so the index stays trustworthy up to it.
            log.warning("spool segment %d: id index not written (%s)", self.active, exc)
            os.close(self.index_fd)
            self.index_fd = None

    def rotate(self) -> None:
        """Called with the lock held."""
        os.close(self.active_fd)
        if self.index_fd is not None:
            os.close(self.index_fd)
        self.active += 1
        self.active_fd = self.create_segment(self.active)
        self.index_fd = self.create_index(self.active)
        self.delete_expired_segments()

    def create_segment(self, number: int) -> int:
        fd = os.open(self.segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.sizes[number] = os.fstat(fd).st_size
        self.fsync_directory()
        return fd

    def create_index(self, number: int) -> int:
        # Emptied in case a stale index was left behind; not fsynced, like its entries.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        return os.open(self.index_path(number), flags, 0o600)

    # Reading and replay bookkeeping

    def read_from(self, position: Position, limit: int | None = None) -> Iterator[SpoolRecord]:
        """Records from `position` on, in order (at most `limit`), up to the last fsynced one."""
        with self.lock:
            sizes = dict(self.sizes)
        count = 0
        for number in sorted(n for n in sizes if n >= position.segment):
            start = position.offset if number == position.segment else 0
            for record in self.read_segment(number, start, sizes[number]):
                if limit is not None and count >= limit:
                    return
                yield record
                count += 1

    def read_segment(self, number: int, start: int, end: int) -> Iterator[SpoolRecord]:
        try:
            segment = open(self.segment_path(number), "rb")  # noqa: SIM115 (generator-held)
        except FileNotFoundError:
            return
        with segment:
            segment.seek(start)
            offset = start
            while offset + HEADER.size <= end:
                length, crc, appended_ms = HEADER.unpack(segment.read(HEADER.size))
                payload = segment.read(length) if length <= MAX_RECORD_BYTES else b""
                if len(payload) != length or record_crc(payload, appended_ms) != crc:
                    log.warning("spool segment %d: unreadable record at offset %d", number, offset)
                    return
                next_offset = offset + HEADER.size + length
                yield SpoolRecord(
                    Position(number, offset),
                    Position(number, next_offset),
                    appended_ms / 1000,
                    payload,
                )
                offset = next_offset

    def record_ids(self, id_of_payload: Callable[[bytes], str]) -> Iterator[str]:
        """The id of every record in the retained segments, oldest first.

        Ids come from each segment's index; records it does not cover (appended without ids,
        or after the index was cut short) are read and given to `id_of_payload`.
        """
        with self.lock:
            sizes = dict(self.sizes)
        for number in sorted(sizes):
            ids, covered = self.read_index(number, sizes[number])
            yield from ids
            if covered < sizes[number]:
                log.info(
                    "spool segment %d: id index covers %d of %d bytes; reading the rest",
                    number,
                    covered,
                    sizes[number],
                )
                for record in self.read_segment(number, covered, sizes[number]):
                    yield id_of_payload(record.payload)

    def read_index(self, number: int, segment_size: int) -> tuple[list[str], int]:
        """The ids of a segment's first records, and the offset up to which they cover it."""
        try:
            data = self.index_path(number).read_bytes()
        except FileNotFoundError:
            return [], 0
        ids: list[str] = []
        covered = offset = 0
        while offset + INDEX_ENTRY_HEADER <= len(data):
            [crc] = INDEX_CRC.unpack_from(data, offset)
            length, start, end = INDEX_FIELDS.unpack_from(data, offset + INDEX_CRC.size)
            id_start = offset + INDEX_ENTRY_HEADER
            raw_id = data[id_start : id_start + length]
            checked = data[offset + INDEX_CRC.size : id_start + length]
            intact = len(raw_id) == length and zlib.crc32(checked) == crc
            # Each entry must take up where the previous one ended, within the segment.
            if not intact or start != covered or not start < end <= segment_size:
                break
            ids.append(raw_id.decode())
            covered, offset = end, id_start + length
        return ids, covered

    def commit(self, position: Position, records: int) -> None:
        """Record that everything before `position` (`records` more records) is in ClickHouse."""
        write_atomically(
            self.directory / CHECKPOINT_FILE, f"{position.segment} {position.offset}\n"
        )
        with self.lock:
            self.checkpoint = position
            self.replayed_records += records
            self.delete_expired_segments()
        upcoming = next(self.read_from(position, limit=1), None)
        self.oldest_unreplayed_at = upcoming.appended_at if upcoming else None

    def delete_expired_segments(self) -> None:
        """Called with the lock held."""
        expired_before = time.time() - self.retention_s
        for number in sorted(self.sizes):
            if number >= self.checkpoint.segment or number == self.active:
                return
            path = self.segment_path(number)
            if path.stat().st_mtime > expired_before:
                return
            # The index first: a segment left without one is read instead, never misread.
            self.index_path(number).unlink(missing_ok=True)
            path.unlink()
            del self.sizes[number]

    # Accounting

    def unreplayed_bytes(self) -> int:
        with self.lock:
            checkpoint, sizes = self.checkpoint, dict(self.sizes)
        total = sum(size for number, size in sizes.items() if number > checkpoint.segment)
        return total + max(0, sizes.get(checkpoint.segment, 0) - checkpoint.offset)

    def unreplayed_records(self) -> int:
        return self.appended_records - self.replayed_records

    def oldest_unreplayed_age_s(self) -> float:
        oldest = self.oldest_unreplayed_at
        return 0.0 if oldest is None or not self.unreplayed_records() else time.time() - oldest

    def end_position(self) -> Position:
        """Just past the last fsynced record."""
        with self.lock:
            return Position(self.active, self.sizes[self.active])

    def first_position(self) -> Position:
        with self.lock:
            return Position(min(self.sizes), 0)

    # Files

    def segment_path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{SEGMENT_SUFFIX}"

    def index_path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{INDEX_SUFFIX}"

    def fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.active_fd)
        if self.index_fd is not None:
            os.close(self.index_fd)


def encode_record(payload: bytes, appended_at: float) -> bytes:
    appended_ms = int(appended_at * 1000)
    return HEADER.pack(len(payload), record_crc(payload, appended_ms), appended_ms) + payload


def record_crc(payload: bytes, appended_ms: int) -> int:
    return zlib.crc32(payload, zlib.crc32(appended_ms.to_bytes(8, "big")))


def encode_index_entry(batch_id: str, start: int, end: int) -> bytes:
    raw_id = batch_id.encode()
    checked = INDEX_FIELDS.pack(len(raw_id), start, end) + raw_id
    return INDEX_CRC.pack(zlib.crc32(checked)) + checked


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
