"""What the detection service reads from the other services: the live rules (from
ConfigService.WatchConfig, the stream the gateways hold) and the logs (ingest's
LogStore, read-only with the service token), and where it stores alert events
(LogStore.StoreAlerts)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import orjson

from detection_service.engine import RuleFailed
from osquery_config.detections import Detection
from osquery_config.state import InvalidState, State
from protos.v1 import config_pb2, config_pb2_grpc, logs_pb2, logs_pb2_grpc
from quarry.serving.grpc_runtime import aio_channel, run_forever_with_reconnect

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 60.0
STORE_TIMEOUT_S = 15.0


class LiveRules:
    """Hands the live state's detections to `take` on every change of the live config."""

    def __init__(self, config_addr: str, take: Callable[[Sequence[Detection]], None]) -> None:
        self._channel = aio_channel(config_addr)
        self._stub = config_pb2_grpc.ConfigServiceStub(self._channel)
        self._take = take
        self.version = 0

    async def run(self) -> None:
        await run_forever_with_reconnect("config detections", self._watch_once)

    async def _watch_once(self) -> None:
        await self._channel.channel_ready()
        async for event in self._stub.WatchConfig(config_pb2.WatchConfigRequest()):
            if event.HasField("live") and event.live.version != self.version:
                self._live(event.live.state_json, event.live.version)

    def _live(self, state_json: str, version: int) -> None:
        try:
            state = State.from_json(state_json)
        except InvalidState as exc:
            log.warning("live config version %d not read for detections: %s", version, exc)
            return
        self.version = version
        self._take(state.detections)
        log.info("detections of live config version %d: %d rules", version, len(state.detections))

    async def close(self) -> None:
        await self._channel.close()


class IngestLogs:
    """The logs through ingest's LogStore: rule SQL (read-only) and alert events."""

    def __init__(self, ingest_addr: str) -> None:
        self._channel = aio_channel(ingest_addr)
        self._stub = logs_pb2_grpc.LogStoreStub(self._channel)

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        try:
            response = await self._stub.Query(logs_pb2.SqlRequest(sql=sql), timeout=QUERY_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise RuleFailed(f"ingest: {exc.code().name}: {exc.details()}") from None
        if response.error:
            raise RuleFailed(response.error)
        return list(response.columns), [orjson.loads(row) for row in response.rows_json]

    async def store_now(self) -> int:
        """Unix time by the log store's clock (the one that stamps stored_at)."""
        _, rows = await self.query("SELECT toUnixTimestamp(now())")
        return int(rows[0][0])

    async def store_alerts(self, events: list[logs_pb2.AlertEvent]) -> None:
        await self._stub.StoreAlerts(logs_pb2.AlertEvents(events=events), timeout=STORE_TIMEOUT_S)

    async def close(self) -> None:
        await self._channel.close()
