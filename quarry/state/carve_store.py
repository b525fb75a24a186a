"""The local-disk carve store: one data file per carve, and a SQLite index of progress.

The gateway writes it (gateway/carving/sessions.py applies osquery's requests to it),
`quarry carve` and the distributed service read it, so it lives below them, in the state layer
(docs/adr/0008-file-carving.md). Layout under the carve directory (default
state_dir/carves, or QUARRY_CARVE_DIR: quarry/state/directory.py):

    index.sqlite3        one row per carve session, one row per block received
    <session_id>.carve   the carve's bytes: each block is written at its own offset

Every gateway worker on the machine opens the same index, so a carve's blocks may reach
any worker in any order. A block is written and fsynced into the data file before its
index row commits, so a block the index counts is on disk. The index row is the only
arbiter: `INSERT OR IGNORE` on (session, block) makes a re-sent block count once, and
the carve completes when its count reaches block_count. Completing (hashing the file)
is idempotent, so two workers racing to complete, or a worker dying half-way, are safe:
the next block, the next sweep or the other worker completes it again with the same
result.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quarry.state.sqlite_store import SqliteStore

RECEIVING, COMPLETE, EXPIRED = "receiving", "complete", "expired"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HASH_CHUNK_BYTES = 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS carves (
    session_id TEXT PRIMARY KEY,
    carve_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    host_identifier TEXT NOT NULL,
    block_count INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    carve_size INTEGER NOT NULL,
    blocks_received INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    sha256 TEXT NOT NULL DEFAULT '',
    compression TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    completed_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS carves_by_carve_id ON carves (carve_id);
CREATE INDEX IF NOT EXISTS carves_by_request ON carves (node_id, request_id);
CREATE TABLE IF NOT EXISTS carve_blocks (
    session_id TEXT NOT NULL,
    block_id INTEGER NOT NULL,
    PRIMARY KEY (session_id, block_id)
) WITHOUT ROWID;
"""


class CarveRejected(Exception):
    """A carve request that cannot be taken; the message is shown to osquery and people."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Carve:
    """One carve session as the index holds it."""

    session_id: str
    carve_id: str  # osquery's carve_guid, from the carves table row
    request_id: str
    node_id: str
    host_identifier: str
    block_count: int
    block_size: int
    carve_size: int
    blocks_received: int
    bytes_received: int
    status: str
    sha256: str
    compression: str  # "zstd" for osquery's --carver_compression, else ""
    started_at: float
    updated_at: float
    completed_at: float

    @property
    def all_blocks_in(self) -> bool:
        return self.blocks_received >= self.block_count

    def expected_block_bytes(self, block_id: int) -> int:
        """Every block is block_size bytes except the last, which holds the remainder."""
        if block_id < self.block_count - 1:
            return self.block_size
        return self.carve_size - self.block_size * (self.block_count - 1)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class BlockOutcome:
    carve: Carve  # after this block
    duplicate: bool  # the block was already stored


class CarveStore(SqliteStore):
    """The index and data files of one carve directory; safe across threads and processes
    (BEGIN IMMEDIATE transactions, so a read-modify-write never interleaves with another
    gateway worker's)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory / "index.sqlite3", SCHEMA)
        self._db.row_factory = sqlite3.Row

    def data_path(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.carve"

    # --- reading ----------------------------------------------------------------------

    def get(self, session_id: str) -> Carve | None:
        return self._one("SELECT * FROM carves WHERE session_id = ?", (session_id,))

    def find(self, carve_or_session_id: str) -> Carve | None:
        """A carve by session id, or by osquery's carve id (the newest session wins)."""
        return self.get(carve_or_session_id) or self._one(
            "SELECT * FROM carves WHERE carve_id = ? ORDER BY status = 'complete' DESC,"
            " started_at DESC LIMIT 1",
            (carve_or_session_id,),
        )

    def find_open(self, node_id: str, request_id: str) -> Carve | None:
        """The session a start request already opened (osquery re-sends a start it lost)."""
        return self._one(
            "SELECT * FROM carves WHERE node_id = ? AND request_id = ? AND status = ?",
            (node_id, request_id, RECEIVING),
        )

    def list(self) -> list[Carve]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM carves ORDER BY started_at DESC").fetchall()
        return [Carve(**dict(row)) for row in rows]

    def count_open(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM carves WHERE status = ?", (RECEIVING,)
            ).fetchone()
        return int(row[0])

    # --- writing ----------------------------------------------------------------------

    def create(self, carve: Carve) -> Carve:
        """Open a session: an empty (sparse) data file of the carve's size, then its row."""
        path = self.data_path(carve.session_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, carve.carve_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_directory()
        with self._transaction() as db:
            columns = carve.to_json()
            db.execute(
                f"INSERT INTO carves ({', '.join(columns)})"
                f" VALUES ({', '.join('?' for _ in columns)})",
                tuple(columns.values()),
            )
        if carve.block_count == 0:
            return self.complete(carve.session_id) or carve
        return carve

    def put_block(
        self, session_id: str, block_id: int, data: bytes, expiry_s: float, sender_node_id: str = ""
    ) -> BlockOutcome:
        """Store one block durably and count it once; raises CarveRejected when it cannot.

        `sender_node_id` is the node that sent the block, when its request said (osquery
        5.23+ sends its node key in a header); a block from another node is refused.
        """
        carve = self._receiving(session_id, expiry_s)
        if sender_node_id and sender_node_id != carve.node_id:
            raise CarveRejected(f"carve session {session_id} belongs to another node", 403)
        if carve.status == COMPLETE:
            return BlockOutcome(carve, duplicate=True)
        _check_block(carve, block_id, data)
        self._write_at(carve, block_id * carve.block_size, data)
        now = time.time()
        with self._transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO carve_blocks (session_id, block_id) VALUES (?, ?)",
                (session_id, block_id),
            ).rowcount
            if inserted:
                db.execute(
                    "UPDATE carves SET blocks_received = blocks_received + 1,"
                    " bytes_received = bytes_received + ?, updated_at = ? WHERE session_id = ?",
                    (len(data), now, session_id),
                )
            status = db.execute(
                "SELECT status FROM carves WHERE session_id = ?", (session_id,)
            ).fetchone()
        if status is None or status[0] == EXPIRED:
            # Expired while this block was being written: the sweep deleted the file.
            with contextlib.suppress(FileNotFoundError):
                self.data_path(session_id).unlink()
            raise CarveRejected(f"carve session {session_id} expired", 410)
        return BlockOutcome(self.get(session_id) or carve, duplicate=not inserted)

    def complete(self, session_id: str) -> Carve | None:
        """Hash a carve whose blocks are all in and mark it complete (idempotent)."""
        carve = self.get(session_id)
        if carve is None or carve.status != RECEIVING or not carve.all_blocks_in:
            return carve
        try:
            sha256, head = _hash_file(self.data_path(session_id))
        except FileNotFoundError:
            return self.get(session_id)  # expired meanwhile
        with self._transaction() as db:
            db.execute(
                "UPDATE carves SET status = ?, sha256 = ?, compression = ?, completed_at = ?,"
                " updated_at = ? WHERE session_id = ? AND status = ?",
                (
                    COMPLETE,
                    sha256,
                    "zstd" if head.startswith(ZSTD_MAGIC) else "",
                    time.time(),
                    time.time(),
                    session_id,
                    RECEIVING,
                ),
            )
            db.execute("DELETE FROM carve_blocks WHERE session_id = ?", (session_id,))
        return self.get(session_id)

    def sweep(self, expiry_s: float, retention_s: float) -> tuple[list[Carve], list[Carve]]:
        """Expire carves not complete in time, delete complete carves past retention.

        Returns (expired, unfinished): carves that have every block but were never marked
        complete (their worker died while hashing), for the caller to complete.
        """
        now = time.time()
        with self._transaction() as db:
            expired = [
                Carve(**dict(row))
                for row in db.execute(
                    "SELECT * FROM carves WHERE status = ? AND started_at < ?"
                    " AND blocks_received < block_count",
                    (RECEIVING, now - expiry_s),
                )
            ]
            for carve in expired:
                self._mark_expired(db, carve.session_id, now)
            purged = [
                row[0]
                for row in db.execute(
                    "SELECT session_id FROM carves WHERE status = ? AND completed_at < ?",
                    (COMPLETE, now - retention_s),
                )
            ]
            db.executemany("DELETE FROM carves WHERE session_id = ?", [(s,) for s in purged])
            unfinished = [
                Carve(**dict(row))
                for row in db.execute(
                    "SELECT * FROM carves WHERE status = ? AND blocks_received >= block_count",
                    (RECEIVING,),
                )
            ]
        for session_id in [c.session_id for c in expired] + purged:
            with contextlib.suppress(FileNotFoundError):
                self.data_path(session_id).unlink()
        return expired, unfinished

    # --- internals --------------------------------------------------------------------

    def _receiving(self, session_id: str, expiry_s: float) -> Carve:
        """The session a block belongs to, expiring it first if its time is up."""
        carve = self.get(session_id)
        if carve is None:
            raise CarveRejected(f"unknown carve session {session_id!r}", 404)
        if carve.status == EXPIRED:
            raise CarveRejected(f"carve session {session_id} expired", 410)
        if carve.status == RECEIVING and carve.started_at < time.time() - expiry_s:
            with self._transaction() as db:
                self._mark_expired(db, session_id, time.time())
            with contextlib.suppress(FileNotFoundError):
                self.data_path(session_id).unlink()
            raise CarveRejected(f"carve session {session_id} expired", 410)
        return carve

    @staticmethod
    def _mark_expired(db: sqlite3.Connection, session_id: str, now: float) -> None:
        db.execute(
            "UPDATE carves SET status = ?, updated_at = ? WHERE session_id = ? AND status = ?",
            (EXPIRED, now, session_id, RECEIVING),
        )
        db.execute("DELETE FROM carve_blocks WHERE session_id = ?", (session_id,))

    def _write_at(self, carve: Carve, offset: int, data: bytes) -> None:
        try:
            # No O_CREAT: a session's file exists from its start until it expires.
            fd = os.open(self.data_path(carve.session_id), os.O_WRONLY)
        except FileNotFoundError:
            raise CarveRejected(f"carve session {carve.session_id} expired", 410) from None
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _one(self, sql: str, params: tuple) -> Carve | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return Carve(**dict(row)) if row else None


def _check_block(carve: Carve, block_id: int, data: bytes) -> None:
    if not 0 <= block_id < carve.block_count:
        raise CarveRejected(
            f"block_id {block_id} is outside this carve's blocks 0..{carve.block_count - 1}"
        )
    expected = carve.expected_block_bytes(block_id)
    if len(data) != expected:
        raise CarveRejected(
            f"block {block_id} holds {len(data)} bytes; this carve's block {block_id}"
            f" must hold {expected} (block_size {carve.block_size}, carve_size {carve.carve_size})"
        )


def _hash_file(path: Path) -> tuple[str, bytes]:
    """The file's SHA-256 and its first bytes (to recognise a zstd archive)."""
    digest = hashlib.sha256()
    head = b""
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            head = head or chunk[:4]
            digest.update(chunk)
    return digest.hexdigest(), head
