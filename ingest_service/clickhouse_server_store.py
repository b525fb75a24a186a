"""Log store on a ClickHouse server, through clickhouse-driver's native protocol.

Works with Debian's ClickHouse 18.16 and with modern servers. With 18.16, rows must go as
the data argument of `execute`: inline VALUES or FORMAT JSONEachRow text makes the server
wait until the socket times out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clickhouse_driver import Client

from ingest_service.log_store import DATABASE, QueryResult
from ingest_service.schema import apply_schema, is_modern, retention_days

# The driver logs a full traceback per failed connect; the service logs one line per failed
# insert instead.
logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)

# Without these an unreachable server blocks an insert (and so every ack) for minutes.
DEFAULT_URL_OPTIONS = {"connect_timeout": "5", "send_receive_timeout": "60"}


def client_url(url: str, database: str) -> str:
    """The URL with its database replaced and default timeouts added where missing."""
    parts = urlsplit(url)
    options = {**DEFAULT_URL_OPTIONS, **dict(parse_qsl(parts.query))}
    return urlunsplit(parts._replace(path=f"/{database}", query=urlencode(options)))


class ClickHouseServerStore:
    """A LogStore on a ClickHouse server; one connection for inserts, one for queries."""

    def __init__(self, url: str) -> None:
        self.url = url
        # A connection cannot be shared between threads: one each, each behind a lock.
        self.insert_client = Client.from_url(client_url(url, DATABASE))
        self.query_client = Client.from_url(client_url(url, DATABASE))
        self.insert_lock = threading.Lock()
        self.query_lock = threading.Lock()

    def ensure_schema(self) -> None:
        # The quarry database may not exist yet, so connect to `default` to create it.
        bootstrap = Client.from_url(client_url(self.url, "default"))
        try:
            version = bootstrap.execute("SELECT version()")[0][0]
            apply_schema(bootstrap.execute, DATABASE, is_modern(version), retention_days())
        finally:
            bootstrap.disconnect()

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        # Column by column: the driver's columnar insert is ~1.5x faster than row by row.
        with self.insert_lock:
            self.insert_client.execute(
                f"INSERT INTO {DATABASE}.{table} ({', '.join(columns)}) VALUES",
                list(zip(*rows, strict=True)),
                columnar=True,
            )

    def query(self, sql: str) -> QueryResult:
        with self.query_lock:
            rows, column_types = self.query_client.execute(sql, with_column_types=True)
        return QueryResult(
            columns=[name for name, _ in column_types],
            types=[type_name for _, type_name in column_types],
            rows=[list(row) for row in rows],
        )

    def version(self) -> str:
        with self.query_lock:
            return str(self.query_client.execute("SELECT version()")[0][0])

    def close(self) -> None:
        self.insert_client.disconnect()
        self.query_client.disconnect()
