"""The live osquery config, held as the exact bytes to send.

Fed by ConfigService.WatchConfig. Serving a config is then a memory read; a later
issue makes this per node group (targeting), keyed the same way.
"""

from __future__ import annotations

import asyncio
import logging

from gateway import metrics
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.grpc_runtime import run_forever_with_reconnect

log = logging.getLogger(__name__)


class ConfigCache:
    def __init__(self, stub: config_pb2_grpc.ConfigServiceStub) -> None:
        self._stub = stub
        self.body: bytes | None = None
        self.version = -1
        self.synced = asyncio.Event()

    async def run(self) -> None:
        await run_forever_with_reconnect("config", self._watch_once)

    async def _watch_once(self) -> None:
        async for doc in self._stub.WatchConfig(config_pb2.WatchConfigRequest()):
            self.body = doc.config_json.encode()
            self.version = doc.version
            metrics.WATCH_SYNCED.labels("config").set(1)
            self.synced.set()
            log.info("config version %d (%d bytes) now served", doc.version, len(self.body))
        metrics.WATCH_SYNCED.labels("config").set(0)
