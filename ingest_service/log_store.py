"""What the ingest service needs from a log store: the protocol both stores implement, and
what they share.

Two stores implement it: a ClickHouse server through clickhouse-driver
(`clickhouse_server_store`) and embedded ClickHouse through chdb
(`embedded_clickhouse_store`); both import this module, never the other way round (the
ingest process picks one: `open_log_store` in ingest_service/server.py). Calls block; the
service runs them off its event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from quarry.runtime.clickhouse_sql import sql_string

DATABASE = "quarry"


@dataclass(frozen=True)
class QueryResult:
    """What a SQL statement returned: column names and types, and rows of plain values."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


class ReadOnlyRefused(Exception):
    """ClickHouse refused a statement of a read-only query: it would write or change state."""


class LogStore(Protocol):
    def ensure_schema(self) -> None:
        """Create the database and tables if they are missing."""

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert rows (tuples of values in the order of `columns`) into a quarry table."""

    def query(self, sql: str) -> QueryResult:
        """Run one SQL statement in the quarry database; raises with the server's message."""

    def read_only_query(self, sql: str) -> QueryResult:
        """As query, with ClickHouse's `readonly = 1`: ClickHouse itself refuses any write,
        DDL, setting change or table function (raises ReadOnlyRefused) (docs/security.md)."""

    def version(self) -> str:
        """The server version, as `SELECT version()` prints it."""

    def stored_batch_rows(self, table: str, batch_ids: Iterable[str]) -> dict[str, int]:
        """How many rows of each of these batches the table holds (absent ids: none)."""

    def drop_expired_partitions(self, days: Mapping[str, int]) -> list[tuple[str, str]]:
        """Drop partitions past their table's retention; returns the (table, partition)s."""

    def close(self) -> None: ...


# ClickHouse's error code READONLY: "Cannot execute query in readonly mode".
READONLY_ERROR_CODE = 164


class ReadOnlyQueries:
    """The store seen through read-only queries only: what `query` runs cannot change it."""

    def __init__(self, store: LogStore) -> None:
        self.store = store

    def query(self, sql: str) -> QueryResult:
        return self.store.read_only_query(sql)


def batch_rows_sql(database: str, table: str, batch_ids: Iterable[str]) -> str:
    """The de-duplication check of docs/adr/0004-spool-and-exactly-once.md."""
    ids = ", ".join(sql_string(batch_id) for batch_id in batch_ids)
    return (
        f"SELECT batch_id, count() FROM {database}.{table} WHERE batch_id IN ({ids}) "
        "GROUP BY batch_id"
    )
