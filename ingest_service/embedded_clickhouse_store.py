"""Log store on embedded ClickHouse (chdb): the default when no server URL is set.

Only one process may open a chdb directory, so the ingest process owns it and answers
everyone else's SQL through the LogStore gRPC service.

Two chdb sessions share the directory: one for the ingest's writes and admins' SQL, one
for read-only queries. The reader's session is set `readonly = 1` once, and ClickHouse
lets no statement undo that, so nothing run there can write (docs/security.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from chdb.session import Session

from ingest_service.log_store import (
    DATABASE,
    READONLY_ERROR_CODE,
    QueryResult,
    ReadOnlyRefused,
    batch_rows_sql,
)
from ingest_service.schema import (
    apply_schema,
    drop_expired_partitions,
    is_modern,
    retention_days,
)


class EmbeddedClickHouseStore:
    """A LogStore on a chdb session over a data directory."""

    def __init__(self, path: Path) -> None:
        self.session = Session(str(path))
        self.reader = Session(str(path))
        # Both sessions, used from the writer thread and from query threads, one at a time.
        self.lock = threading.Lock()
        for session in (self.session, self.reader):
            # Numbers as JSON numbers, as clickhouse-driver returns them for a server.
            session.query("SET output_format_json_quote_64bit_integers = 0")
        self.reader.query("SET readonly = 1")

    def ensure_schema(self) -> None:
        modern = is_modern(self.version())
        with self.lock:
            apply_schema(self.run_rows, DATABASE, modern, retention_days())
            for session in (self.session, self.reader):
                session.query(f"USE {DATABASE}")

    def run_rows(self, sql: str) -> list[list[Any]]:
        """Rows of one statement; the caller holds the lock."""
        output = self.session.query(sql, "JSONCompact").bytes()
        return orjson.loads(output)["data"] if output.strip() else []

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        # One JSON document for the whole insert, column by column: one dumps call is ~20x
        # cheaper than one per row, and orjson writes the tuples of zip() as arrays.
        body = orjson.dumps(list(zip(*rows, strict=True))).decode()
        with self.lock:
            self.session.query(
                f"INSERT INTO {DATABASE}.{table} ({', '.join(columns)}) "
                f"FORMAT JSONCompactColumns\n{body}"
            )

    def query(self, sql: str) -> QueryResult:
        return self._query(self.session, sql)

    def read_only_query(self, sql: str) -> QueryResult:
        try:
            return self._query(self.reader, sql)
        except RuntimeError as exc:
            if f"Code: {READONLY_ERROR_CODE}." in str(exc):
                raise ReadOnlyRefused(str(exc)) from exc
            raise

    def _query(self, session: Session, sql: str) -> QueryResult:
        with self.lock:
            output = session.query(sql, "JSONCompact").bytes()
        if not output.strip():
            return QueryResult(columns=[], types=[], rows=[])
        result = orjson.loads(output)
        return QueryResult(
            columns=[column["name"] for column in result["meta"]],
            types=[column["type"] for column in result["meta"]],
            rows=result["data"],
        )

    def version(self) -> str:
        with self.lock:
            output = self.session.query("SELECT version()", "JSONCompact").bytes()
        return str(orjson.loads(output)["data"][0][0])

    def stored_batch_rows(self, table: str, batch_ids: Iterable[str]) -> dict[str, int]:
        rows = self.query(batch_rows_sql(DATABASE, table, batch_ids)).rows
        return {str(batch_id): int(count) for batch_id, count in rows}

    def drop_expired_partitions(self, days: Mapping[str, int]) -> list[tuple[str, str]]:
        return drop_expired_partitions(self, days)

    def close(self) -> None:
        with self.lock:
            self.reader.close()
            self.session.close()
