"""Every valid node key, in memory: how the gateway authenticates check-ins.

Fed by EnrollService.WatchNodes: a snapshot, then each enrollment, approval and
revocation (the enrollments of one group commit arrive as one GROUP event). A REMOVE
(revocation, or a key replaced by re-enrollment) evicts the key at once, so a revoked
node is refused on its next request by every gateway replica.
On every (re)connection the snapshot is built into a fresh dict and swapped in when
complete, so a key revoked while the stream was down disappears too.

Entries are indexed by the SHA-256 digest of the key and the key itself is then
compared with hmac.compare_digest: the dict lookup never compares secret bytes, so
response times say nothing about how much of a guessed key was right.

A key the dict does not know (enrolled through another gateway a moment ago, or
bogus) costs one GetNode call; a "no such key" answer is remembered briefly so a flood
of bad keys stays cheap. An UPSERT for that key clears the memory at once, so a
fresh key is never refused because of it.

Each successful authentication also marks the node as seen (one dict write); a sweep
every few seconds forgets marks older than ACTIVE_WINDOW_S and publishes the count as
quarry_gateway_active_nodes, so the gauge costs nothing per request beyond the mark.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from gateway import metrics
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.serving.grpc_runtime import run_forever_with_reconnect

log = logging.getLogger(__name__)

NEGATIVE_TTL_S = 5.0
MAX_NEGATIVE_ENTRIES = 100_000
LOOKUP_TIMEOUT_S = 5.0
ACTIVE_WINDOW_S = 300.0
ACTIVE_SWEEP_INTERVAL_S = 5.0
# Every authenticated check-in counts one: the labelled child is looked up once.
CACHE_HITS = metrics.NODE_CACHE.labels("hit")

Event = enroll_pb2.NodeEvent


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What the osquery API needs to know about an authenticated node."""

    node_id: str
    host_identifier: str
    # os_version.platform from enrollment ("ubuntu", "darwin", ...): config targeting.
    platform: str = ""
    # Not approved yet: served an empty config and no live queries.
    pending: bool = False
    tags: tuple[str, ...] = ()
    group: str = ""


@dataclass(frozen=True, slots=True)
class CachedKey:
    key: bytes
    node: NodeIdentity


def key_digest(node_key: str | bytes) -> bytes:
    raw = node_key.encode() if isinstance(node_key, str) else node_key
    return hashlib.sha256(raw).digest()


def cached_key(node: enroll_pb2.Node, node_key: str = "") -> CachedKey:
    identity = NodeIdentity(
        node_id=node.node_id,
        host_identifier=node.host_identifier,
        platform=node.platform,
        pending=node.pending,
        tags=tuple(node.tags),
        group=node.group,
    )
    return CachedKey((node_key or node.node_key).encode(), identity)


class NodeCache:
    def __init__(self, stub: enroll_pb2_grpc.EnrollServiceStub) -> None:
        self._stub = stub
        self._by_digest: dict[bytes, CachedKey] = {}
        # digest -> when it was found unknown or removed (time.monotonic()).
        self._unknown_since: dict[bytes, float] = {}
        # node id -> when it last authenticated here (time.monotonic()).
        self._last_seen: dict[str, float] = {}
        self.synced = asyncio.Event()

    def __len__(self) -> int:
        return len(self._by_digest)

    def add(self, node: enroll_pb2.Node, node_key: str = "") -> None:
        """Remember a valid key (from a watch event or an enrollment this gateway made)."""
        entry = cached_key(node, node_key)
        digest = key_digest(entry.key)
        self._by_digest[digest] = entry
        self._unknown_since.pop(digest, None)
        metrics.NODES_CACHED.set(len(self._by_digest))

    def remove(self, node_key: str) -> None:
        """Forget a key now; it stays refused without asking the enroll service."""
        digest = key_digest(node_key)
        self._by_digest.pop(digest, None)
        self._remember_unknown(digest)
        metrics.NODES_CACHED.set(len(self._by_digest))

    def lookup(self, node_key: str) -> NodeIdentity | None:
        """The node owning this key if the cache holds it; never asks the service."""
        if not node_key:
            return None
        presented = node_key.encode()
        entry = self._by_digest.get(key_digest(presented))
        if entry is None or not hmac.compare_digest(entry.key, presented):
            return None
        return entry.node

    async def authenticate(self, node_key: str) -> NodeIdentity | None:
        """The node owning this key, or None when the key is unknown or revoked."""
        if not node_key:
            metrics.NODE_CACHE.labels("empty").inc()
            return None
        node = self.lookup(node_key)
        if node is not None:
            CACHE_HITS.inc()
        else:
            digest = key_digest(node_key)
            if self._is_known_unknown(digest):
                metrics.NODE_CACHE.labels("negative_hit").inc()
                return None
            node = await self._ask_service(node_key, digest)
        if node is not None:
            self._last_seen[node.node_id] = time.monotonic()
        return node

    def active_nodes(self) -> int:
        """Nodes that authenticated here within ACTIVE_WINDOW_S; forgets older marks."""
        horizon = time.monotonic() - ACTIVE_WINDOW_S
        stale = [node_id for node_id, seen in self._last_seen.items() if seen < horizon]
        for node_id in stale:
            del self._last_seen[node_id]
        return len(self._last_seen)

    async def _publish_active_nodes(self) -> None:
        while True:
            metrics.ACTIVE_NODES.set(self.active_nodes())
            await asyncio.sleep(ACTIVE_SWEEP_INTERVAL_S)

    async def _ask_service(self, node_key: str, digest: bytes) -> NodeIdentity | None:
        asked_at = time.monotonic()
        # grpc.aio.AioRpcError propagates: the service is unreachable, so the request is
        # refused without caching anything and osquery retries later.
        found = await self._stub.GetNode(
            enroll_pb2.GetNodeRequest(node_key=node_key), timeout=LOOKUP_TIMEOUT_S
        )
        # A REMOVE that arrived while we waited wins over the older answer.
        removed_meanwhile = self._unknown_since.get(digest, -1.0) >= asked_at
        if found.found and not found.revoked and not removed_meanwhile:
            metrics.NODE_CACHE.labels("miss_found").inc()
            self.add(found, node_key)
            return self.lookup(node_key)
        metrics.NODE_CACHE.labels("miss_unknown").inc()
        self._remember_unknown(digest)
        return None

    def _is_known_unknown(self, digest: bytes) -> bool:
        since = self._unknown_since.get(digest)
        return since is not None and time.monotonic() - since < NEGATIVE_TTL_S

    def _remember_unknown(self, digest: bytes) -> None:
        if len(self._unknown_since) >= MAX_NEGATIVE_ENTRIES:
            self._unknown_since.clear()  # a flood of bogus keys: start over, stay bounded
        self._unknown_since[digest] = time.monotonic()

    # --- the watch stream -------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(
            run_forever_with_reconnect("nodes", self._watch_once), self._publish_active_nodes()
        )

    async def _watch_once(self) -> None:
        fresh: dict[bytes, CachedKey] | None = {}
        async for event in self._stub.WatchNodes(enroll_pb2.WatchNodesRequest()):
            # Changes apply to the live dict even while a snapshot is being received:
            # a revocation must not wait for a resync to finish.
            self.apply(event)
            if fresh is None:
                continue
            if event.kind == Event.SNAPSHOT_DONE:
                self._swap_in(fresh)
                fresh = None
            else:
                _apply_to(fresh, event)
        metrics.WATCH_SYNCED.labels("nodes").set(0)

    def apply(self, event: enroll_pb2.NodeEvent) -> None:
        """One live change from the watch stream (a GROUP: its changes, in order)."""
        if event.kind == Event.UPSERT:
            self.add(event.node)
        elif event.kind == Event.REMOVE:
            self.remove(event.node.node_key)
        elif event.kind == Event.GROUP:
            for change in event.group:
                self.apply(change)

    def _swap_in(self, snapshot: dict[bytes, CachedKey]) -> None:
        self._by_digest = snapshot
        self._unknown_since.clear()
        metrics.NODES_CACHED.set(len(self._by_digest))
        metrics.WATCH_SYNCED.labels("nodes").set(1)
        self.synced.set()
        log.info("node keys synced: %d valid", len(self._by_digest))


def _apply_to(snapshot: dict[bytes, CachedKey], event: enroll_pb2.NodeEvent) -> None:
    if event.kind == Event.UPSERT:
        entry = cached_key(event.node)
        snapshot[key_digest(entry.key)] = entry
    elif event.kind == Event.REMOVE:
        snapshot.pop(key_digest(event.node.node_key), None)
    elif event.kind == Event.GROUP:
        for change in event.group:
            _apply_to(snapshot, change)
