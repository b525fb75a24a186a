"""The EnrollService gRPC servicer: enrollment rules, admin calls, node change events."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from enroll_service import metrics
from enroll_service.admin_token_service import AdminTokenRpcs
from enroll_service.admin_tokens import AdminTokenStore
from enroll_service.enroll_secrets import (
    ACTIVE,
    CLIENT_CERTIFICATE_SECRET_NAME,
    EXHAUSTED,
    EXPIRED,
    KIND_CLIENT_CERTIFICATE,
    KIND_CREATED,
    KIND_SHARED,
    REVOKED,
    SHARED_SECRET_NAME,
    STATES,
    InvalidPolicy,
    SecretRecord,
    hash_secret,
    new_secret_value,
    policy_from_request,
    secret_message,
)
from enroll_service.host_details import HostFacts, parse_host_details
from enroll_service.node_identity import ClonePolicy, has_certificate, node_identity
from enroll_service.rate_limits import RATE_LIMITED, RATE_LIMITED_REASON, EnrollRateLimits
from enroll_service.shared_secret import current_secret, secret_matches
from enroll_service.store import STATUS_CONDITIONS, NewNode, NodeFilter, NodeRecord, NodeStore
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.change_feed import ChangeFeed
from quarry.change_log import ChangeLog, protobuf_feed
from quarry.group_commit import GroupCommit
from quarry.settings import Settings

log = logging.getLogger(__name__)

Event = enroll_pb2.NodeEvent

# Refusal reasons (EnrollResponse.reason) and their metric outcomes.
INVALID_SECRET = "invalid enroll secret"
# Enrollments written in one transaction at most (docs/enrollment.md, "Enrollment storms").
MAX_ENROLL_GROUP = 500
NODE_REVOKED = "node revoked; re-enrollment not allowed"
SECRET_REFUSALS = {
    REVOKED: ("enroll secret revoked", "secret_revoked"),
    EXPIRED: ("enroll secret expired", "secret_expired"),
    EXHAUSTED: ("enroll secret exhausted", "secret_exhausted"),
}


def cooldown_reason(wait_s: int) -> str:
    return f"re-enrolling too often; retry in {wait_s} s"


@dataclass(frozen=True)
class Refusal:
    reason: str
    outcome: str


@dataclass(frozen=True)
class Attempt:
    """An enrollment request admitted at the door, waiting for its group's transaction."""

    request: enroll_pb2.EnrollRequest
    secret: SecretRecord
    now: int
    host_identifier: str
    identity: str
    details_json: str
    facts: HostFacts


@dataclass
class SecretsSeen:
    """The secrets one call's requests present, each looked up once per call (a group of
    250 enrollments reads the shared secret's file once, not 250 times)."""

    shared: str  # the shared secret in force (current_secret)
    # (presented value, has a client certificate) -> its secret row, None if not valid
    found: dict[tuple[str, bool], SecretRecord | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Enrolled:
    node: enroll_pb2.Node
    known_before: bool


class EnrollServicer(AdminTokenRpcs, enroll_pb2_grpc.EnrollServiceServicer):
    def __init__(self, settings: Settings, store: NodeStore, tokens: AdminTokenStore) -> None:
        self._settings = settings
        self._store = store
        self._tokens = tokens
        self._clones = ClonePolicy.from_settings(settings)
        self._rate_limits = EnrollRateLimits(settings)
        self._feed: ChangeFeed[enroll_pb2.NodeEvent] = ChangeFeed()
        # Node events reach the watch streams of every replica through this (ADR 0009).
        self.changes = ChangeLog(
            store.database, "enroll", {"nodes": protobuf_feed(self._feed.publish, Event)}
        )
        # Identities suspected of being clones: rebuilt by refresh_gauges, kept current
        # per enrollment so the gauge needs no scan of the history each time.
        self._suspected: set[str] = set()
        # Enrollments arriving together share one transaction and change event.
        self._groups: GroupCommit[Attempt, enroll_pb2.EnrollResponse] = GroupCommit(
            self._write_group, MAX_ENROLL_GROUP, metrics.ENROLL_GROUP_SIZE.observe
        )
        self._sync_shared_secret()
        self.refresh_gauges()

    def close_watches(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()

    async def close(self) -> None:
        await self._groups.close()

    def _sync_shared_secret(self) -> None:
        """Show the bootstrap secret as "default" in ListSecrets from the start."""
        shared = current_secret(self._settings)
        if shared:
            now = int(time.time())
            self._store.builtin_secret(KIND_SHARED, SHARED_SECRET_NAME, hash_secret(shared), now)

    def refresh_gauges(self) -> None:
        """Recount what changes with the clock alone (expiry, the clone window); prune history."""
        now = int(time.time())
        window_start = self._clones.window_start(now)
        histories = self._store.enrollment_histories(window_start)
        self._suspected = {i for i, h in histories.items() if self._clones.suspected_clone(h)}
        metrics.SUSPECTED_CLONES.set(len(self._suspected))
        states = [record.state(now) for record in self._store.secrets()]
        for state in STATES:
            metrics.SECRETS.labels(state).set(states.count(state))
        # Other replicas enroll and revoke too: recount rather than trust our own tally.
        metrics.VALID_NODES.set(self._store.recount_valid())
        self._store.forget_enrollments_before(window_start)

    # Enrollment

    async def Enroll(
        self, request: enroll_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        return (await self._enroll_all([request]))[0]

    async def EnrollMany(
        self, request: enroll_pb2.EnrollManyRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollManyResponse:
        return enroll_pb2.EnrollManyResponse(responses=await self._enroll_all(request.requests))

    async def _enroll_all(
        self, requests: Sequence[enroll_pb2.EnrollRequest]
    ) -> list[enroll_pb2.EnrollResponse]:
        """Each request's answer, in order: refused at the door, or written in a group."""
        now = int(time.time())
        answers: list[enroll_pb2.EnrollResponse | None] = [None] * len(requests)
        admitted: list[tuple[int, Attempt]] = []
        secrets_seen = SecretsSeen(current_secret(self._settings))
        for index, request in enumerate(requests):
            checked = self._admit(request, now, secrets_seen)
            if isinstance(checked, Refusal):
                answers[index] = self._refuse(request, checked)
            else:
                admitted.append((index, checked))
        written = await self._groups.submit_many([attempt for _, attempt in admitted])
        for (index, _), answer in zip(admitted, written, strict=True):
            answers[index] = answer
        return [answer for answer in answers if answer is not None]

    def _admit(
        self, request: enroll_pb2.EnrollRequest, now: int, secrets_seen: SecretsSeen
    ) -> Attempt | Refusal:
        """What can be decided without the write lock: rate limits, secret, identity."""
        # Before anything else, so refused attempts cost no secret lookup or state.
        if not self._rate_limits.address_allows(request.remote_addr):
            return Refusal(RATE_LIMITED_REASON, RATE_LIMITED)
        key = (request.enroll_secret, has_certificate(request.client_certificate))
        if key not in secrets_seen.found:
            secrets_seen.found[key] = self._presented_secret(request, now, secrets_seen.shared)
        secret = secrets_seen.found[key]
        if secret is None:
            return Refusal(INVALID_SECRET, "invalid_secret")
        state = secret.state(now)
        if state != ACTIVE:
            return Refusal(*SECRET_REFUSALS[state])
        if not self._rate_limits.secret_allows(secret.secret_id, request.remote_addr):
            return Refusal(RATE_LIMITED_REASON, RATE_LIMITED)
        details_json, facts = parse_host_details(request.host_details_json)
        host_identifier = request.host_identifier or facts.hostname or facts.hardware_uuid
        return Attempt(
            request=request,
            secret=secret,
            now=now,
            host_identifier=host_identifier,
            identity=self._identity(request, host_identifier, facts),
            details_json=details_json,
            facts=facts,
        )

    async def _write_group(self, attempts: list[Attempt]) -> list[enroll_pb2.EnrollResponse]:
        """One transaction and one change event for the whole group (group commit; a
        group of one sends its changes one by one, as before groups existed).

        Each attempt is decided in turn inside the transaction, seeing the ones before
        it: a secret's quota, a node's cooldown and its previous key stay exact."""
        events: list[enroll_pb2.NodeEvent] = []
        with self.changes.recording() as record:
            outcomes = [self._enroll_one(attempt, events) for attempt in attempts]
            if len(attempts) == 1:
                for event in events:
                    record("nodes", event)
            elif events:
                record("nodes", Event(kind=Event.GROUP, group=events))
        await self.changes.settled()
        answers = [self._answer(a, outcome) for a, outcome in zip(attempts, outcomes, strict=True)]
        metrics.VALID_NODES.set(self._store.valid_count)
        return answers

    def _enroll_one(
        self, attempt: Attempt, events: list[enroll_pb2.NodeEvent]
    ) -> Enrolled | Refusal:
        """Inside the group's transaction: enroll one attempt, or say why not."""
        secret, now, facts = attempt.secret, attempt.now, attempt.facts
        previous = self._store.node_by_identity(attempt.identity)
        refusal = self._node_refusal(previous, secret, attempt.identity, now)
        if refusal is not None:
            return refusal
        new = NewNode(
            node_key=secrets.token_urlsafe(32),
            identity=attempt.identity,
            host_identifier=attempt.host_identifier,
            hardware_uuid=facts.hardware_uuid,
            hardware_serial=facts.hardware_serial,
            platform_type=attempt.request.platform_type,
            platform=facts.platform,
            osquery_version=facts.osquery_version,
            hostname=facts.hostname,
            host_details_json=attempt.details_json,
            client_certificate_json=_certificate_json(attempt.request.client_certificate),
            pending=secret.policy.requires_approval and not (previous and previous.approved),
        )
        enrollment = self._store.enroll(new, secret, now)
        if enrollment is None:
            # Used up (or revoked) by another enrollment since we looked: say which.
            fresh = self._store.secrets_by_ref(secret.secret_id)[0]
            return Refusal(*SECRET_REFUSALS[fresh.state(now)])
        node = node_message(enrollment.node)
        if enrollment.replaced_key is not None:
            # The old key goes first, so a watcher never holds two keys for one node.
            events.append(Event(kind=Event.REMOVE, node=_key_only(node, enrollment.replaced_key)))
        events.append(Event(kind=Event.UPSERT, node=node, revision=enrollment.node.revision))
        return Enrolled(node, known_before=previous is not None)

    def _answer(self, attempt: Attempt, outcome: Enrolled | Refusal) -> enroll_pb2.EnrollResponse:
        """After the commit: the answer, its metrics and its log line."""
        if isinstance(outcome, Refusal):
            return self._refuse(attempt.request, outcome)
        node = outcome.node
        self._note_clone_suspicion(attempt.identity, attempt.now)
        result = _success_outcome(node, known_before=outcome.known_before)
        metrics.ENROLLMENTS.labels(result).inc()
        log.info(
            "node %s %s as %r (identity %r, secret %r)",
            node.node_id,
            result,
            attempt.host_identifier,
            attempt.identity,
            attempt.secret.name,
        )
        return enroll_pb2.EnrollResponse(ok=True, node_key=node.node_key, node=node)

    def _presented_secret(
        self, request: enroll_pb2.EnrollRequest, now: int, shared: str
    ) -> SecretRecord | None:
        """The secret row the request enrolls with; None when the secret is not valid."""
        presented = request.enroll_secret
        if presented:
            if secret_matches(presented, shared):
                return self._store.builtin_secret(
                    KIND_SHARED, SHARED_SECRET_NAME, hash_secret(shared), now
                )
            return self._store.secret_by_hash(hash_secret(presented))
        if self._settings.enroll_secret_optional_with_client_cert and has_certificate(
            request.client_certificate
        ):
            return self._store.builtin_secret(
                KIND_CLIENT_CERTIFICATE, CLIENT_CERTIFICATE_SECRET_NAME, None, now
            )
        return None

    def _identity(
        self, request: enroll_pb2.EnrollRequest, host_identifier: str, facts: HostFacts
    ) -> str:
        identity = node_identity(self._settings, host_identifier, facts, request.client_certificate)
        # A request naming nothing at all cannot be matched to an earlier one.
        return identity or f"unidentified:{uuid.uuid4()}"

    def _node_refusal(
        self, previous: NodeRecord | None, secret: SecretRecord, identity: str, now: int
    ) -> Refusal | None:
        if (
            previous is not None
            and previous.revoked
            and not secret.policy.allows_reenrollment_after_revocation
        ):
            return Refusal(NODE_REVOKED, "node_revoked")
        history = self._store.enrollment_history(identity, self._clones.window_start(now))
        wait_s = self._clones.cooldown_left(history, now)
        if wait_s:
            return Refusal(cooldown_reason(wait_s), "cooldown")
        return None

    def _note_clone_suspicion(self, identity: str, now: int) -> None:
        history = self._store.enrollment_history(identity, self._clones.window_start(now))
        if self._clones.suspected_clone(history):
            if identity not in self._suspected:
                log.warning("identity %r is a suspected clone: %s", identity, history)
            self._suspected.add(identity)
        else:
            self._suspected.discard(identity)
        metrics.SUSPECTED_CLONES.set(len(self._suspected))

    def _refuse(
        self, request: enroll_pb2.EnrollRequest, refusal: Refusal
    ) -> enroll_pb2.EnrollResponse:
        metrics.ENROLLMENTS.labels(refusal.outcome).inc()
        log.warning(
            "enrollment refused (%s): host %r from %s",
            refusal.reason,
            request.host_identifier,
            request.remote_addr or "unknown address",
        )
        return enroll_pb2.EnrollResponse(ok=False, reason=refusal.reason)

    # The gateway's calls

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
        if (
            record is None
            or record.revoked
            or not hmac.compare_digest(record.node_key.encode(), request.node_key.encode())
        ):
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

    # Nodes (admin)

    async def ListNodes(
        self, request: enroll_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListNodesResponse:
        if request.status and request.status not in STATUS_CONDITIONS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"status must be one of {', '.join(STATUS_CONDITIONS)}; got {request.status!r}",
            )
        records = self._store.list_nodes(
            NodeFilter(
                status=request.status,
                tag=request.tag,
                platform=request.platform,
                secret_name=request.secret_name,
            )
        )
        if request.suspected_clones:
            suspected = self._suspected_identities()
            records = [record for record in records if record.identity in suspected]
        return enroll_pb2.ListNodesResponse(nodes=[node_message(record) for record in records])

    def _suspected_identities(self) -> set[str]:
        now = int(time.time())
        histories = self._store.enrollment_histories(self._clones.window_start(now))
        return {i for i, h in histories.items() if self._clones.suspected_clone(h)}

    async def ShowNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.NodeDetails:
        record = await self._named_node(request, context)
        now = int(time.time())
        history = self._store.enrollment_history(record.identity, self._clones.window_start(now))
        details_json, certificate_json = self._store.host_details(record.node_id)
        return enroll_pb2.NodeDetails(
            node=node_message(record),
            host_details_json=details_json,
            recent_enrollments=history.count,
            suspected_clone=self._clones.suspected_clone(history),
            client_certificate=_certificate_from_json(certificate_json),
        )

    async def RevokeNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        record = await self._named_node(request, context)
        return await self._revoke(record, "revoked")

    async def ApproveNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        record = await self._named_node(request, context)
        if record.revoked:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {record.node_id} is revoked; it must enroll again to be approved",
            )
        if not record.pending:
            return node_message(record)
        with self.changes.recording() as announce:
            approved = self._store.approve(record.node_id, int(time.time()))
            node = node_message(approved)
            announce("nodes", Event(kind=Event.UPSERT, node=node, revision=approved.revision))
        await self.changes.settled()
        log.info("node %s (%r) approved", approved.node_id, approved.host_identifier)
        return node

    async def RejectNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        record = await self._named_node(request, context)
        if record.revoked:
            return node_message(record)
        if not record.pending:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"node {record.node_id} is not pending approval; revoke it instead",
            )
        return await self._revoke(record, "rejected")

    async def _revoke(self, record: NodeRecord, verb: str) -> enroll_pb2.Node:
        with self.changes.recording() as announce:
            revoked = self._store.revoke(record.node_id)
            node = node_message(revoked)
            announce("nodes", Event(kind=Event.REMOVE, node=node, revision=revoked.revision))
        await self.changes.settled()
        metrics.REVOCATIONS.inc()
        metrics.VALID_NODES.set(self._store.valid_count)
        log.info("node %s (%r) %s", revoked.node_id, revoked.host_identifier, verb)
        return node

    async def _named_node(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> NodeRecord:
        if not request.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name a node")
        record = self._store.find(request.node)
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no node with id, node key or host identifier {request.node!r}",
            )
        return record

    # Enroll secrets (admin)

    async def CreateSecret(
        self, request: enroll_pb2.CreateSecretRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.CreatedSecret:
        now = int(time.time())
        try:
            policy = policy_from_request(request, now)
        except InvalidPolicy as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        value = new_secret_value()
        record = self._store.create_secret(policy, KIND_CREATED, hash_secret(value), now)
        log.info("enroll secret %r created (%s)", record.name, record.secret_id)
        self.refresh_gauges()
        return enroll_pb2.CreatedSecret(secret=secret_message(record, now), value=value)

    async def ListSecrets(
        self, request: enroll_pb2.ListSecretsRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListSecretsResponse:
        now = int(time.time())
        records = self._store.secrets()
        if not request.include_inactive:
            records = [record for record in records if record.state(now) == ACTIVE]
        return enroll_pb2.ListSecretsResponse(
            secrets=[secret_message(record, now) for record in records]
        )

    async def RevokeSecret(
        self, request: enroll_pb2.SecretRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollSecret:
        named = await self._named_secrets(request.secret, context)
        now = int(time.time())
        revoked = self._store.revoke_secrets([record.secret_id for record in named], now)
        log.info("enroll secret %r revoked (%d secrets)", request.secret, len(revoked))
        self.refresh_gauges()
        return secret_message(revoked[-1], now)

    async def RotateSecret(
        self, request: enroll_pb2.RotateSecretRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.CreatedSecret:
        if request.grace_seconds < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "grace_seconds must be 0 or more")
        named = await self._named_secrets(request.secret, context)
        if named[-1].kind != KIND_CREATED:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{named[-1].name!r} is a built-in secret; the default one is rotated by"
                " changing the secret file or QUARRY_ENROLL_SECRET",
            )
        current = [record for record in named if not record.revoked_at]
        if not current:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"every secret {request.secret!r} names is revoked; create a new one",
            )
        now = int(time.time())
        policy = current[-1].policy
        # A copied expiry that has passed would give a secret dead at birth.
        if policy.expires_at and policy.expires_at <= now:
            policy = dataclasses.replace(policy, expires_at=0)
        value = new_secret_value()
        record = self._store.rotate_secret(
            [old.secret_id for old in current],
            policy,
            hash_secret(value),
            expire_old_at=now + request.grace_seconds,
            now=now,
        )
        log.info(
            "enroll secret %r rotated; the old one works for %d s more",
            record.name,
            request.grace_seconds,
        )
        self.refresh_gauges()
        return enroll_pb2.CreatedSecret(secret=secret_message(record, now), value=value)

    async def _named_secrets(
        self, ref: str, context: grpc.aio.ServicerContext
    ) -> list[SecretRecord]:
        if not ref:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name a secret (id or name)")
        named = self._store.secrets_by_ref(ref)
        if not named:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no enroll secret with id or name {ref!r}"
            )
        return named


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
        tags=record.tags,
        group=record.group,
        pending=record.pending,
        identity=record.identity,
        secret_name=record.secret_name,
        first_enrolled_at=record.first_enrolled_at,
        hardware_serial=record.hardware_serial,
    )


def _success_outcome(node: enroll_pb2.Node, known_before: bool) -> str:
    if node.pending:
        return "pending"
    return "reenrolled" if known_before else "enrolled"


def _key_only(node: enroll_pb2.Node, node_key: str) -> enroll_pb2.Node:
    """The node as it was under its replaced key (what a REMOVE names)."""
    old = enroll_pb2.Node()
    old.CopyFrom(node)
    old.node_key = node_key
    return old


def _certificate_json(certificate: enroll_pb2.ClientCertificate) -> str:
    if not has_certificate(certificate):
        return ""
    return json.dumps(
        {
            "subject": certificate.subject,
            "subject_alt_names": list(certificate.subject_alt_names),
            "sha256_fingerprint": certificate.sha256_fingerprint,
        }
    )


def _certificate_from_json(certificate_json: str) -> enroll_pb2.ClientCertificate | None:
    return (
        enroll_pb2.ClientCertificate(**json.loads(certificate_json)) if certificate_json else None
    )
