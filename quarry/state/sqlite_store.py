"""A plain SQLite store base: WAL journaling, BEGIN IMMEDIATE transactions.

WAL journaling so readers never wait for the writer, and explicit BEGIN IMMEDIATE
transactions so a read-modify-write cannot interleave with another. The gateway's carve
index uses it; the stateful services use quarry/state/database.py, which also speaks
PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteStore:
    """Base of the services' stores: an open connection, its schema, transactions."""

    def __init__(self, path: Path, schema: str) -> None:
        # Autocommit mode: transactions are ours, opened by _transaction(). The connection
        # may be used from worker threads too, one at a time under _lock.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(schema)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
