"""The database a stateful service keeps its state in: SQLite (embedded) or PostgreSQL (shared).

Stores write portable SQL with `?` placeholders and see one small API on both:
`execute()` for reads, and `transaction()` for writes, yielding a Transaction with
`execute()`, `executemany()` and `after_commit()`.

Writers are serialized on both backends, so a store's read-modify-write needs no further
care: SQLite takes its write lock at BEGIN IMMEDIATE; PostgreSQL, where several
replicas write the same tables, takes one transaction-scoped advisory lock per service
(`pg_advisory_xact_lock`) first thing in every write transaction (ADR 0009). A
transaction opened inside another one on the same thread becomes a savepoint of it, so a
service can wrap a store's write and the change events it announces in one transaction.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from quarry.runtime.settings import Settings
from quarry.state.directory import state_database_file

log = logging.getLogger(__name__)

SQLITE, POSTGRESQL = "sqlite", "postgresql"

# One advisory lock per service: its writers queue on it (any 64-bit numbers would do;
# these spell "quarry" and the service's index so they are recognisable in pg_locks).
SERVICE_LOCK_KEYS = {
    "enroll": 0x717561727279_01,
    "config": 0x717561727279_02,
    "distributed": 0x717561727279_03,
    "detection": 0x717561727279_04,
}
# Schema migrations of every service queue on this one: services may share a database.
MIGRATION_LOCK_KEY = 0x717561727279_00

# How long a new connection may take, and a request may wait for one from the pool.
CONNECT_TIMEOUT_S = 5
POOL_WAIT_S = 2.0
POOL_MAX_SIZE = 4
# Once PostgreSQL is found unreachable, calls fail at once for this long instead of each
# waiting POOL_WAIT_S: the services' event loops stay free to answer what needs no state.
UNREACHABLE_BACKOFF_S = 1.0
# Store calls run on the services' event loops, so each must end soon: a long wait for
# another replica's write lock, a statement stuck on a lost network path or a peer gone
# without a word becomes an error the caller retries, not a frozen service. TCP
# keepalives and tcp_user_timeout notice a dead peer in ~15 s instead of the kernel's
# ~15 minutes.
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "options": "-c lock_timeout=10000 -c statement_timeout=30000",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
}


class Rows(Protocol):
    """What execute() returns: a cursor, or rows already fetched."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Transaction(Protocol):
    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        """One statement for each row (on PostgreSQL in one pipelined round trip); the
        number of rows they changed in all."""

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run action once the outermost transaction has committed (never on rollback)."""


class StateDatabase(Protocol):
    dialect: str
    # True when other processes (replicas) write the same database.
    shared: bool

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows: ...

    def transaction(self, lock_key: int | None = None) -> Any:
        """Context manager yielding a Transaction; writers are serialized."""

    def describe(self) -> str: ...

    def holds_lead(self, lock_key: int) -> bool:
        """Whether this process is the one replica that does a periodic job (its leader)."""

    def close(self) -> None: ...


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached (at start, or by `quarry migrate`)."""


def open_state_database(settings: Settings, service: str, read_only: bool = False) -> StateDatabase:
    """PostgreSQL when QUARRY_DATABASE_URL is set, else SQLite state_dir/<service>.sqlite3.

    read_only (a dry run): SQLite is read into an in-memory copy, so neither the file nor
    the state directory is created or written.
    """
    if read_only and not settings.database_url:
        if not settings.state_dir.is_dir():
            raise DatabaseUnavailable(f"no state directory {settings.state_dir.resolve()}")
        return SqliteDatabase.copy_in_memory(state_database_file(settings, service))
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise DatabaseUnavailable(
                "QUARRY_DATABASE_URL must be a postgresql://user:password@host:port/database URL"
            )
        return PostgresDatabase(settings.database_url, SERVICE_LOCK_KEYS[service])
    return SqliteDatabase(state_database_file(settings, service))


class _TransactionState:
    """The open transaction of one thread: its depth (savepoints) and what runs after it."""

    def __init__(self, execute: Callable[..., Rows], executemany: Callable[..., int]) -> None:
        self.execute = execute
        self.executemany = executemany
        self.depth = 0
        self.after: list[Callable[[], None]] = []

    def after_commit(self, action: Callable[[], None]) -> None:
        self.after.append(action)


@contextmanager
def _savepoint(state: _TransactionState) -> Iterator[_TransactionState]:
    """A nested transaction: rolled back alone when it fails, kept when it succeeds."""
    name = f"nested_{state.depth}"
    state.depth += 1
    state.execute(f"SAVEPOINT {name}")
    try:
        yield state
    except BaseException:
        state.execute(f"ROLLBACK TO SAVEPOINT {name}")
        state.execute(f"RELEASE SAVEPOINT {name}")
        raise
    finally:
        state.depth -= 1
    state.execute(f"RELEASE SAVEPOINT {name}")


def _run_after_commit(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        action()


class SqliteDatabase:
    """One SQLite file, WAL journaling so readers never wait for the writer."""

    dialect = SQLITE
    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        # Autocommit mode: transactions are ours. The connection may be used from worker
        # threads too, one transaction at a time under _lock.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.RLock()
        self._open: _TransactionState | None = None

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        return self._db.execute(sql, params)

    @contextmanager
    def transaction(self, lock_key: int | None = None) -> Iterator[Transaction]:
        with self._lock:
            if self._open is not None:
                with _savepoint(self._open) as nested:
                    yield nested
                return
            state = _TransactionState(
                self._db.execute, lambda sql, rows: self._db.executemany(sql, rows).rowcount
            )
            self._open = state
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield state
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                self._open = None
        _run_after_commit(state.after)

    @classmethod
    def copy_in_memory(cls, path: Path) -> SqliteDatabase:
        """An in-memory copy of the database in path (empty when there is no such file).

        What a dry run reads: whatever it does to the copy (the migration history table
        it creates), the file is only read, and a missing one is not created.
        """
        copy = cls(Path(":memory:"))
        if path.exists():
            # With no -wal file beside it (no process has it open) the file is read as
            # immutable, which makes no -wal and -shm files; otherwise read-only, through
            # the WAL that holds its latest transactions.
            wal = path.with_name(path.name + "-wal")
            mode = "mode=ro" if wal.exists() else "immutable=1"
            source = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
            try:
                source.backup(copy._db)
            finally:
                source.close()
        copy.path = path
        return copy

    def describe(self) -> str:
        return f"SQLite {self.path}" + ("" if self.path.exists() else " (not created yet)")

    def holds_lead(self, lock_key: int) -> bool:
        return True  # one process owns the file

    def close(self) -> None:
        self._db.close()


class FetchedRows:
    """Rows of a read already fetched, so its connection went straight back to the pool."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


@functools.lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """The stores' `?` placeholders as psycopg's `%s` (a literal % doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def postgres_params(params: Sequence[object]) -> tuple[object, ...]:
    # The schema keeps flags in integer columns, as SQLite does; PostgreSQL will not
    # store a boolean there.
    return tuple(int(p) if isinstance(p, bool) else p for p in params)


class PostgresDatabase:
    """A PostgreSQL database shared by every replica of a service, through a small pool."""

    dialect = POSTGRESQL
    shared = True

    def __init__(self, url: str, lock_key: int) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.url = url
        try:
            # One plain attempt first: fails fast, and says why (the pool only retries).
            psycopg.connect(url, **CONNECTION_OPTIONS).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0]
            raise DatabaseUnavailable(f"cannot connect to {self.describe()}: {reason}") from None
        self._lock_key = lock_key
        self._leader_conn: Any = None
        self._leading = False
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            kwargs={"autocommit": True, **CONNECTION_OPTIONS},
            # A connection broken while PostgreSQL restarted is replaced, not handed out.
            check=ConnectionPool.check_connection,
            timeout=POOL_WAIT_S,
            open=False,
        )
        self._unreachable_until = 0.0
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except PoolTimeout:
            self._pool.close()
            raise DatabaseUnavailable(f"cannot connect to {self.describe()}") from None
        self._local = threading.local()

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        state: _TransactionState | None = getattr(self._local, "open", None)
        if state is not None:
            return state.execute(sql, params)
        with self._connection() as conn:
            cursor = conn.execute(postgres_sql(sql), postgres_params(params))
            rows = cursor.fetchall() if cursor.description else []
            return FetchedRows(rows, cursor.rowcount)

    @contextmanager
    def transaction(self, lock_key: int | None = None) -> Iterator[Transaction]:
        open_state: _TransactionState | None = getattr(self._local, "open", None)
        if open_state is not None:
            with _savepoint(open_state) as nested:
                yield nested
            return
        with self._connection() as conn:

            def execute(sql: str, params: Sequence[object] = ()) -> Rows:
                return conn.execute(postgres_sql(sql), postgres_params(params))

            def executemany(sql: str, rows: Iterable[Sequence[object]]) -> int:
                with conn.cursor() as cursor:
                    cursor.executemany(postgres_sql(sql), [postgres_params(r) for r in rows])
                    return cursor.rowcount

            state = _TransactionState(execute, executemany)
            self._local.open = state
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s)",
                        (self._lock_key if lock_key is None else lock_key,),
                    )
                    yield state
            finally:
                self._local.open = None
        _run_after_commit(state.after)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection; DatabaseUnavailable (at once, while backing off) when
        PostgreSQL cannot be reached."""
        import psycopg
        from psycopg_pool import PoolTimeout

        if time.monotonic() < self._unreachable_until:
            raise DatabaseUnavailable(f"{self.describe()} unreachable; retrying shortly")
        try:
            with self._pool.connection() as conn:
                try:
                    yield conn
                except psycopg.OperationalError as exc:
                    if not conn.broken:
                        raise  # e.g. a statement error: PostgreSQL itself is there
                    self._unreachable_until = time.monotonic() + UNREACHABLE_BACKOFF_S
                    raise DatabaseUnavailable(f"{self.describe()}: {exc}") from exc
        except PoolTimeout as exc:
            self._unreachable_until = time.monotonic() + UNREACHABLE_BACKOFF_S
            raise DatabaseUnavailable(f"{self.describe()} unreachable") from exc

    def holds_lead(self, lock_key: int) -> bool:
        """A session advisory lock on a connection of its own: held until this process (or
        its connection) goes, when another replica takes it over on its next try."""
        import psycopg

        try:
            if self._leader_conn is None or self._leader_conn.broken:
                self._leader_conn = psycopg.connect(self.url, autocommit=True, **CONNECTION_OPTIONS)
                row = self._leader_conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,))
                self._leading = row.fetchone()[0]
            elif not self._leading:
                row = self._leader_conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,))
                self._leading = row.fetchone()[0]
            else:
                self._leader_conn.execute("SELECT 1")  # still connected, so still holding it
        except psycopg.Error:
            self._leading = False
        return self._leading

    def describe(self) -> str:
        parts = urlsplit(self.url)
        # Never the password: this goes to logs.
        return f"PostgreSQL {parts.hostname or 'local socket'}:{parts.port or 5432}{parts.path}"

    def close(self) -> None:
        if self._leader_conn is not None:
            self._leader_conn.close()
        self._pool.close()


class Queryable(Protocol):
    """A database or an open transaction: both run a read."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows: ...


class StateStore:
    """Base of the services' stores: reads through self._db, writes in self._transaction()."""

    def __init__(self, database: StateDatabase) -> None:
        self.database = database
        self._db: Queryable = database

    def _transaction(self) -> Any:
        return self.database.transaction()
