"""Which config each node fetched, sent to the config service in batches.

The config service uses these records to tell which nodes run which version during a
staged rollout. Like check-ins they are best effort and merged in memory: only a
node's newest fetch is kept, and the batch is flushed every `interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway import metrics
from protos.v1 import config_pb2, config_pb2_grpc

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 10.0


class ConfigFetchRecorder:
    def __init__(self, stub: config_pb2_grpc.ConfigServiceStub, interval: float) -> None:
        self._stub = stub
        self._interval = interval
        self._fetches: dict[str, config_pb2.ConfigFetch] = {}

    def fetched(self, node_id: str, sha1: str, version: int) -> None:
        self._fetches[node_id] = config_pb2.ConfigFetch(
            node_id=node_id, sha1=sha1, version=version, fetched_at=int(time.time())
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        if not self._fetches:
            return
        fetches, self._fetches = self._fetches, {}
        batch = config_pb2.ConfigFetchBatch(fetches=list(fetches.values()))
        try:
            await self._stub.RecordConfigFetches(batch, timeout=RPC_TIMEOUT_S)
        except Exception as exc:  # best effort: keep the newest record of each node, retry
            log.warning("recording %d config fetches failed: %s", len(fetches), exc)
            metrics.CONFIG_FETCHES_RECORDED.labels("error").inc(len(fetches))
            for node_id, fetch in fetches.items():
                self._fetches.setdefault(node_id, fetch)
            return
        metrics.CONFIG_FETCHES_RECORDED.labels("ok").inc(len(fetches))
