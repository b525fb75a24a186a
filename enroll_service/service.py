"""The EnrollService gRPC servicer: translates messages and publishes node changes."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator

import grpc

from enroll_service import metrics
from enroll_service.host_details import parse_host_details
from enroll_service.shared_secret import current_secret, secret_matches
from enroll_service.store import NewNode, NodeRecord, NodeStore
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.change_feed import ChangeFeed
from quarry.settings import Settings

log = logging.getLogger(__name__)

Event = enroll_pb2.NodeEvent
INVALID_SECRET = "invalid enroll secret"


class EnrollServicer(enroll_pb2_grpc.EnrollServiceServicer):
    def __init__(self, settings: Settings, store: NodeStore) -> None:
        self._settings = settings
        self._store = store
        self._feed: ChangeFeed[enroll_pb2.NodeEvent] = ChangeFeed()
        metrics.VALID_NODES.set(store.count_valid())

    def close_watches(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()

    async def Enroll(
        self, request: enroll_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        if not secret_matches(request.enroll_secret, current_secret(self._settings)):
            metrics.ENROLLMENTS.labels("invalid_secret").inc()
            log.warning(
                "enrollment refused (%s): host %r from %s",
                INVALID_SECRET,
                request.host_identifier,
                request.remote_addr or "unknown address",
            )
            return enroll_pb2.EnrollResponse(ok=False, reason=INVALID_SECRET)

        details_json, facts = parse_host_details(request.host_details_json)
        host_identifier = request.host_identifier or facts.hostname or facts.hardware_uuid
        enrollment = self._store.enroll(
            NewNode(
                node_key=secrets.token_urlsafe(32),
                host_identifier=host_identifier,
                hardware_uuid=facts.hardware_uuid,
                platform_type=request.platform_type,
                platform=facts.platform,
                osquery_version=facts.osquery_version,
                hostname=facts.hostname,
                host_details_json=details_json,
            ),
            now=int(time.time()),
        )
        node = node_message(enrollment.node)
        if enrollment.replaced_key is not None:
            # The old key goes first, so a watcher never holds two keys for one node.
            self._feed.publish(
                Event(kind=Event.REMOVE, node=_key_only(node, enrollment.replaced_key))
            )
        self._feed.publish(Event(kind=Event.UPSERT, node=node, revision=enrollment.node.revision))
        outcome = "reenrolled" if enrollment.replaced_key is not None else "enrolled"
        metrics.ENROLLMENTS.labels(outcome).inc()
        metrics.VALID_NODES.set(self._store.count_valid())
        log.info("node %s %s as %r", node.node_id, outcome, host_identifier)
        return enroll_pb2.EnrollResponse(ok=True, node_key=node.node_key, node=node)

    async def WatchNodes(
        self, request: enroll_pb2.WatchNodesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[enroll_pb2.NodeEvent]:
        metrics.WATCH_STREAMS.inc()
        try:
            # Subscribe before reading the snapshot: nothing can slip in between.
            with self._feed.subscribe() as live:
                for record in self._store.valid_nodes():
                    yield Event(
                        kind=Event.UPSERT, node=node_message(record), revision=record.revision
                    )
                yield Event(kind=Event.SNAPSHOT_DONE)
                async for event in live:
                    yield event
        finally:
            metrics.WATCH_STREAMS.dec()

    async def GetNode(
        self, request: enroll_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        record = self._store.by_key(request.node_key) if request.node_key else None
        if record is None or record.revoked:
            metrics.NODE_LOOKUPS.labels("not_found").inc()
            return enroll_pb2.Node(found=False)
        metrics.NODE_LOOKUPS.labels("found").inc()
        return node_message(record)

    async def RecordCheckins(
        self, request: enroll_pb2.CheckinBatch, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.RecordCheckinsResponse:
        seen = [(c.node_id, c.seen_at) for c in request.checkins]
        recorded = self._store.record_checkins(seen)
        metrics.CHECKINS.inc(len(seen))
        return enroll_pb2.RecordCheckinsResponse(recorded=recorded)

    async def ListNodes(
        self, request: enroll_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListNodesResponse:
        return enroll_pb2.ListNodesResponse(
            nodes=[node_message(record) for record in self._store.all_nodes()]
        )

    async def RevokeNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        if not request.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name a node to revoke")
        record = self._store.revoke(request.node)
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no node with id, node key or host identifier {request.node!r}",
            )
        node = node_message(record)
        self._feed.publish(Event(kind=Event.REMOVE, node=node, revision=record.revision))
        metrics.REVOCATIONS.inc()
        metrics.VALID_NODES.set(self._store.count_valid())
        log.info("node %s (%r) revoked", record.node_id, record.host_identifier)
        return node


def node_message(record: NodeRecord) -> enroll_pb2.Node:
    return enroll_pb2.Node(
        node_id=record.node_id,
        node_key=record.node_key,
        host_identifier=record.host_identifier,
        platform=record.platform,
        platform_type=record.platform_type,
        osquery_version=record.osquery_version,
        enrolled_at=record.enrolled_at,
        last_seen_at=record.last_seen_at,
        revoked=record.revoked,
        found=True,
        hostname=record.hostname,
    )


def _key_only(node: enroll_pb2.Node, node_key: str) -> enroll_pb2.Node:
    """The node as it was under its replaced key (what a REMOVE names)."""
    old = enroll_pb2.Node()
    old.CopyFrom(node)
    old.node_key = node_key
    return old
