"""Every valid node key, in memory: how the gateway authenticates check-ins.

Fed by EnrollService.WatchNodes: a snapshot, then each enrollment and revocation.
On every (re)connection the snapshot is built into a fresh dict and swapped in when
complete, so a key revoked while the stream was down disappears too. A key the dict
does not know (enrolled through another gateway a moment ago, or bogus) costs one
GetNode call; its answer is remembered briefly so a flood of bad keys stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from gateway import metrics
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.grpc_runtime import run_forever_with_reconnect

log = logging.getLogger(__name__)

NEGATIVE_TTL_S = 5.0
LOOKUP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    host_identifier: str


class NodeCache:
    def __init__(self, stub: enroll_pb2_grpc.EnrollServiceStub) -> None:
        self._stub = stub
        self._by_key: dict[str, NodeIdentity] = {}
        self._unknown_until: dict[str, float] = {}
        self.synced = asyncio.Event()

    def add(self, node: enroll_pb2.Node) -> None:
        """Remember a node key (from a watch event or an enrollment this gateway made)."""
        self._by_key[node.node_key] = NodeIdentity(node.node_id, node.host_identifier)
        self._unknown_until.pop(node.node_key, None)
        metrics.NODES_CACHED.set(len(self._by_key))

    def remove(self, node_key: str) -> None:
        self._by_key.pop(node_key, None)
        metrics.NODES_CACHED.set(len(self._by_key))

    async def authenticate(self, node_key: str) -> NodeIdentity | None:
        """The node owning this key, or None when the key is unknown or revoked."""
        if not node_key:
            return None
        node = self._by_key.get(node_key)
        if node is not None:
            metrics.NODE_CACHE.labels("hit").inc()
            return node
        if self._unknown_until.get(node_key, 0.0) > time.monotonic():
            metrics.NODE_CACHE.labels("negative_hit").inc()
            return None
        return await self._lookup(node_key)

    async def _lookup(self, node_key: str) -> NodeIdentity | None:
        try:
            found = await self._stub.GetNode(
                enroll_pb2.GetNodeRequest(node_key=node_key), timeout=LOOKUP_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            # The service is unreachable: refuse without caching, osquery retries later.
            raise
        if found.found and not found.revoked:
            metrics.NODE_CACHE.labels("miss_found").inc()
            self.add(found)
            return self._by_key[node_key]
        metrics.NODE_CACHE.labels("miss_unknown").inc()
        if len(self._unknown_until) > 100_000:
            self._unknown_until.clear()
        self._unknown_until[node_key] = time.monotonic() + NEGATIVE_TTL_S
        return None

    async def run(self) -> None:
        await run_forever_with_reconnect("nodes", self._watch_once)

    async def _watch_once(self) -> None:
        fresh: dict[str, NodeIdentity] | None = {}
        async for event in self._stub.WatchNodes(enroll_pb2.WatchNodesRequest()):
            if fresh is not None:  # still receiving the snapshot
                if event.kind == enroll_pb2.NodeEvent.SNAPSHOT_DONE:
                    self._by_key, fresh = fresh, None
                    metrics.NODES_CACHED.set(len(self._by_key))
                    metrics.WATCH_SYNCED.labels("nodes").set(1)
                    self.synced.set()
                    log.info("node keys synced: %d valid", len(self._by_key))
                elif event.kind == enroll_pb2.NodeEvent.UPSERT:
                    fresh[event.node.node_key] = NodeIdentity(
                        event.node.node_id, event.node.host_identifier
                    )
                elif event.kind == enroll_pb2.NodeEvent.REMOVE:
                    fresh.pop(event.node.node_key, None)
                continue
            if event.kind == enroll_pb2.NodeEvent.UPSERT:
                self.add(event.node)
            elif event.kind == enroll_pb2.NodeEvent.REMOVE:
                self.remove(event.node.node_key)
        metrics.WATCH_SYNCED.labels("nodes").set(0)
