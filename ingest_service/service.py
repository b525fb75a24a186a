"""The LogStore gRPC service: runs analysts' SQL (`quarry sql`) on the ingest process's store.

Only an admin's SQL may change the store. Anyone else's (read-only and operator tokens,
and Quarry's own processes with the service token) runs read-only in ClickHouse itself
(`readonly = 1`), and a statement ClickHouse refuses there is answered PERMISSION_DENIED,
which the audit log records as the call's outcome (docs/security.md). One statement per
request (quarry/runtime/sql_text.py says why); errors are ClickHouse's message on one line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import grpc
import orjson

from ingest_service.log_store import QueryResult, ReadOnlyRefused
from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.access.admin_auth import ADMIN, current_caller
from quarry.runtime.sql_text import error_line, statements

log = logging.getLogger(__name__)


class Queries(Protocol):
    def query(self, sql: str) -> QueryResult: ...


class LogStoreService(logs_pb2_grpc.LogStoreServicer):
    def __init__(self, writable: Queries, read_only: Queries) -> None:
        self.writable = writable
        self.read_only = read_only

    async def Query(
        self, request: logs_pb2.SqlRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.SqlResponse:
        caller = current_caller()
        may_write = caller is not None and caller.role == ADMIN
        store = self.writable if may_write else self.read_only
        count = len(statements(request.sql))
        if count != 1:
            return logs_pb2.SqlResponse(error=_statement_count_error(count))
        try:
            result = await asyncio.to_thread(store.query, request.sql)
        except ReadOnlyRefused as refused:
            who = f"token {caller.name!r} ({caller.role})" if caller else "this caller"
            reason = " ".join(str(refused).split())
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{who} may only read: below the admin role `quarry sql` runs read-only, "
                f"and ClickHouse refused this statement ({reason})",
            )
            raise  # abort raises; this line only tells readers and type checkers so
        except Exception as exc:
            # A bad query is the caller's mistake, not an RPC failure: return the message.
            return logs_pb2.SqlResponse(error=error_line(str(exc)))
        rows = result.rows[: request.max_rows] if request.max_rows else result.rows
        return logs_pb2.SqlResponse(
            columns=result.columns,
            types=result.types,
            rows_json=[json_row(row) for row in rows],
            total_rows=len(result.rows),
        )


def _statement_count_error(count: int) -> str:
    if count == 0:
        return "no statement to run"
    return (
        f"{count} statements: quarry sql runs one statement at a time; "
        "run each with its own quarry sql"
    )


def json_row(row: list[Any]) -> str:
    # Dates and times as ClickHouse prints them ("2025-01-05 10:20:30"), on both stores.
    return orjson.dumps(row, default=str, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
