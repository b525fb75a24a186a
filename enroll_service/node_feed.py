"""The node change feed: enrollments, approvals and revocations, as WatchNodes streams them.

A change reaches the watch streams of every replica through the change log (ADR 0009); a
stream opens with every valid node, then SNAPSHOT_DONE, then the changes as they commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from enroll_service import metrics
from enroll_service.node_messages import node_message
from enroll_service.store import NodeStore
from protos.v1 import enroll_pb2
from quarry.state.change_feed import ChangeFeed, watch
from quarry.state.change_log import ChangeLog, protobuf_feed

Event = enroll_pb2.NodeEvent
FEED = "nodes"


class NodeFeed:
    def __init__(self, store: NodeStore) -> None:
        self._store = store
        self._feed: ChangeFeed[enroll_pb2.NodeEvent] = ChangeFeed()
        self.changes = ChangeLog(
            store.database, "enroll", {FEED: protobuf_feed(self._feed.publish, Event)}
        )

    def watch(self) -> AsyncIterator[enroll_pb2.NodeEvent]:
        return watch(self._feed, self._snapshot, metrics.WATCH_STREAMS)

    def _snapshot(self) -> Iterator[enroll_pb2.NodeEvent]:
        for record in self._store.valid_nodes():
            yield Event(kind=Event.UPSERT, node=node_message(record), revision=record.revision)
        yield Event(kind=Event.SNAPSHOT_DONE)

    def close(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()
