"""What the ingest service needs from a log store, and how it picks one.

Two stores implement it: a ClickHouse server through clickhouse-driver
(`clickhouse_server_store`) and embedded ClickHouse through chdb
(`embedded_clickhouse_store`). Calls block; the service runs them off its event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from quarry.settings import Settings

DATABASE = "quarry"


@dataclass(frozen=True)
class QueryResult:
    """What a SQL statement returned: column names and types, and rows of plain values."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


class LogStore(Protocol):
    def ensure_schema(self) -> None:
        """Create the database and tables if they are missing."""

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert rows (tuples of values in the order of `columns`) into a quarry table."""

    def query(self, sql: str) -> QueryResult:
        """Run one SQL statement in the quarry database; raises with the server's message."""

    def version(self) -> str:
        """The server version, as `SELECT version()` prints it."""

    def close(self) -> None: ...


def open_log_store(settings: Settings) -> LogStore:
    """The ClickHouse server of settings.clickhouse_url, or embedded chdb when it is empty."""
    if settings.clickhouse_url:
        from ingest_service.clickhouse_server_store import ClickHouseServerStore

        return ClickHouseServerStore(settings.clickhouse_url)
    from ingest_service.embedded_clickhouse_store import EmbeddedClickHouseStore

    return EmbeddedClickHouseStore(settings.path("chdb"))
