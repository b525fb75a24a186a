"""The LogStore gRPC service: runs analysts' SQL (`quarry sql`) on the ingest process's store,
and stores the detection service's alert events (StoreAlerts: with embedded chdb only this
process may write the store, docs/adr/0021-detections-on-arrival.md).

Only an admin's SQL may change the store. Anyone else's (read-only and operator tokens,
and Quarry's own processes with the service token) runs read-only in ClickHouse itself
(`readonly = 1`), and a statement ClickHouse refuses there is answered PERMISSION_DENIED,
which the audit log records as the call's outcome (docs/security.md). One statement per
request (quarry/runtime/sql_text.py says why); errors are ClickHouse's message on one line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
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


class AlertWriter(Protocol):
    def stored_batch_rows(self, table: str, batch_ids: list[str]) -> dict[str, int]: ...

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None: ...


ALERT_COLUMNS = (
    "alert_id", "rule", "severity", "event", "dedup_key", "host_identifier", "first_seen",
    "hits", "rows_json", "node_id", "received_at", "batch_id",
)  # fmt: skip


class LogStoreService(logs_pb2_grpc.LogStoreServicer):
    def __init__(
        self, writable: Queries, read_only: Queries, alerts: AlertWriter | None = None
    ) -> None:
        self.writable = writable
        self.read_only = read_only
        self.alerts = alerts

    async def StoreAlerts(
        self, request: logs_pb2.AlertEvents, context: grpc.aio.ServicerContext
    ) -> logs_pb2.StoreAlertsResponse:
        if self.alerts is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no alert store here")
        return await asyncio.to_thread(store_alert_events, self.alerts, list(request.events))

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


def store_alert_events(
    store: AlertWriter, events: list[logs_pb2.AlertEvent]
) -> logs_pb2.StoreAlertsResponse:
    """Insert the events quarry.alerts does not hold yet (by event_id, its batch_id): the
    detection service re-sends an event whose answer it missed (at least once), and it is
    stored once. One writer (the detection leader) makes check-then-insert enough."""
    unique = list({event.event_id: event for event in events}.values())
    held = store.stored_batch_rows("alerts", [e.event_id for e in unique]) if unique else {}
    fresh = [event for event in unique if event.event_id not in held]
    store.insert_rows("alerts", ALERT_COLUMNS, [_alert_row(event) for event in fresh])
    return logs_pb2.StoreAlertsResponse(stored=len(fresh), already_stored=len(events) - len(fresh))


def _alert_row(event: logs_pb2.AlertEvent) -> tuple:
    return (
        event.alert_id, event.rule, event.severity, event.event, event.dedup_key,
        event.host_identifier, event.first_seen, event.hits, list(event.rows_json), "",
        event.at, event.event_id,
    )  # fmt: skip


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
