"""The nodes, one at a time: the gateways' key lookups and check-ins, and the admin's
list, show, approve, reject and revoke, and what a name a person gives means
(docs/enrollment.md).

An approval or revocation is announced on the node feed in the transaction that makes it,
so every gateway serves or refuses the node at once.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from enroll_service import metrics
from enroll_service.clone_watch import CloneWatch
from enroll_service.node_feed import FEED, Event
from enroll_service.node_messages import node_message
from enroll_service.store import STATUS_CONDITIONS, NodeFilter, NodeRecord, NodeStore
from osquery_config.targeting import Selection
from protos.v1 import enroll_pb2
from quarry.access.admin_auth import Refused
from quarry.state.change_log import ChangeLog

log = logging.getLogger(__name__)

# Nodes per SEEN event: 5,000 check-ins are ~150 kB, well under gRPC's 4 MB message limit.
SEEN_CHUNK = 5_000


@dataclass(frozen=True)
class NodeView:
    """What ShowNode tells of one node."""

    record: NodeRecord
    host_details_json: str
    certificate_json: str
    recent_enrollments: int
    suspected_clone: bool


class NodeAdmin:
    def __init__(
        self,
        store: NodeStore,
        changes: ChangeLog,
        clones: CloneWatch,
        tags_of: Callable[[NodeRecord], frozenset[str]] = lambda record: frozenset(record.tags),
    ) -> None:
        self._store = store
        self._changes = changes
        self._clones = clones
        self._tags_of = tags_of
        # Check-ins recorded here since the last SEEN event: node id -> latest seen_at.
        self._seen: dict[str, int] = {}

    def by_key(self, node_key: str) -> NodeRecord | None:
        """The node holding this key, compared in constant time; None if none or revoked."""
        record = self._store.by_key(node_key) if node_key else None
        if (
            record is None
            or record.revoked
            or not hmac.compare_digest(record.node_key.encode(), node_key.encode())
        ):
            metrics.NODE_LOOKUPS.labels("not_found").inc()
            return None
        metrics.NODE_LOOKUPS.labels("found").inc()
        return record

    def record_checkins(self, seen: Sequence[tuple[str, int]]) -> int:
        recorded = self._store.record_checkins(seen)
        metrics.CHECKINS.inc(len(seen))
        for node_id, seen_at in seen:
            if seen_at > self._seen.get(node_id, 0):
                self._seen[node_id] = seen_at
        return recorded

    def announce_seen(self) -> int:
        """One SEEN event with the check-ins recorded since the last one (in chunks that fit
        a gRPC message); what quarry.hosts' last_seen follows (docs/adr/0020-hosts-table.md).
        Returns how many nodes it named."""
        seen, self._seen = self._seen, {}
        if not seen:
            return 0
        checkins = [enroll_pb2.Checkin(node_id=n, seen_at=t) for n, t in sorted(seen.items())]
        with self._changes.recording() as announce:
            for start in range(0, len(checkins), SEEN_CHUNK):
                announce(FEED, Event(kind=Event.SEEN, seen=checkins[start : start + SEEN_CHUNK]))
        return len(checkins)

    def list(self, node_filter: NodeFilter, suspected_clones: bool) -> list[NodeRecord]:
        if node_filter.status and node_filter.status not in STATUS_CONDITIONS:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"status must be one of {', '.join(STATUS_CONDITIONS)}; got {node_filter.status!r}",
            )
        # Tag and platform are matched here, as every targeting matches them
        # (osquery_config.targeting, ADR 0013): the secret's tags and the live config's
        # node_tags alike; a platform family (linux) or the platform itself (ubuntu).
        records = self._store.list_nodes(dataclasses.replace(node_filter, tag="", platform=""))
        if node_filter.tag or node_filter.platform:
            wanted = Selection.of(
                tags=[node_filter.tag] if node_filter.tag else [],
                platforms=[node_filter.platform] if node_filter.platform else [],
            )
            records = [r for r in records if wanted.matches(r.platform, self._tags_of(r))]
        if suspected_clones:
            suspected = self._clones.suspected_identities()
            records = [record for record in records if record.identity in suspected]
        return records

    def show(self, ref: str) -> NodeView:
        record = self.named(ref)
        history = self._clones.history(record.identity, int(time.time()))
        details_json, certificate_json = self._store.host_details(record.node_id)
        return NodeView(
            record,
            details_json,
            certificate_json,
            recent_enrollments=history.count,
            suspected_clone=self._clones.policy.suspected_clone(history),
        )

    async def approve(self, ref: str) -> NodeRecord:
        record = self.named(ref)
        if record.revoked:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {record.node_id} is revoked; it must enroll again to be approved",
            )
        if not record.pending:
            return record
        with self._changes.recording() as announce:
            approved = self._store.approve(record.node_id, int(time.time()))
            node = node_message(approved)
            announce(FEED, Event(kind=Event.UPSERT, node=node, revision=approved.revision))
        await self._changes.settled()
        log.info("node %s (%r) approved", approved.node_id, approved.host_identifier)
        return approved

    async def reject(self, ref: str) -> NodeRecord:
        record = self.named(ref)
        if record.revoked:
            return record
        if not record.pending:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {record.node_id} is not pending approval; revoke it instead",
            )
        return await self._revoke(record, "rejected")

    async def revoke(self, ref: str) -> NodeRecord:
        return await self._revoke(self.named(ref), "revoked")

    async def _revoke(self, record: NodeRecord, verb: str) -> NodeRecord:
        with self._changes.recording() as announce:
            revoked = self._store.revoke(record.node_id)
            node = node_message(revoked)
            announce(FEED, Event(kind=Event.REMOVE, node=node, revision=revoked.revision))
        await self._changes.settled()
        metrics.REVOCATIONS.inc()
        metrics.VALID_NODES.set(self._store.valid_count)
        log.info("node %s (%r) %s", revoked.node_id, revoked.host_identifier, verb)
        return revoked

    def named(self, ref: str) -> NodeRecord:
        """The node a person names by node id, node key, host identifier or hostname.

        Several nodes may share a host identifier or hostname (a re-installed machine, a
        clone): a valid one is preferred to revoked ones, two valid ones are ambiguous and
        refused with the candidates (docs/enrollment.md, "Naming a node").
        """
        if not ref:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "name a node")
        candidates = self._store.named(ref)
        if not candidates:
            raise Refused(
                grpc.StatusCode.NOT_FOUND,
                f"no node named {ref!r}: `quarry node list --search {ref}`",
            )
        valid = [record for record in candidates if not record.revoked]
        if len(valid) > 1:
            listed = "; ".join(_candidate(record) for record in valid[:MAX_CANDIDATES_SHOWN])
            more = len(valid) - MAX_CANDIDATES_SHOWN
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{ref!r} names {len(valid)} nodes: {listed}"
                + (f"; and {more} more" if more > 0 else "")
                + ". Name one by its node id",
            )
        return (valid or candidates)[0]

    def resolve(self, refs: Sequence[str]) -> list[NodeRecord]:
        """The node each name means, in order (refused at the first unknown or ambiguous)."""
        return [self.named(ref) for ref in refs]


# An ambiguous name is refused with this many candidates listed at most.
MAX_CANDIDATES_SHOWN = 10


def _candidate(record: NodeRecord) -> str:
    return (
        f"{record.node_id} (host identifier {record.host_identifier!r},"
        f" hostname {record.hostname!r}, {'pending' if record.pending else 'active'})"
    )
