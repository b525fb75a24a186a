"""The LogStore gRPC service: runs analysts' SQL (`quarry sql`) on the ingest process's store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import orjson

from ingest_service.log_store import LogStore
from protos.v1 import logs_pb2, logs_pb2_grpc

log = logging.getLogger(__name__)


class LogStoreService(logs_pb2_grpc.LogStoreServicer):
    def __init__(self, store: LogStore) -> None:
        self.store = store

    async def Query(
        self, request: logs_pb2.SqlRequest, context: grpc.aio.ServicerContext
    ) -> logs_pb2.SqlResponse:
        try:
            result = await asyncio.to_thread(self.store.query, request.sql)
        except Exception as exc:
            # A bad query is the caller's mistake, not an RPC failure: return the message.
            return logs_pb2.SqlResponse(error=str(exc))
        return logs_pb2.SqlResponse(
            columns=result.columns,
            types=result.types,
            rows_json=[json_row(row) for row in result.rows],
        )


def json_row(row: list[Any]) -> str:
    # Dates and times as ClickHouse prints them ("2025-01-05 10:20:30"), on both stores.
    return orjson.dumps(row, default=str, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
