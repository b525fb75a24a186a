"""The enrollment rules: who may enroll, with which secret and identity, and in which group.

A request is first checked at the door, without the write lock (rate limits, the secret,
the identity); the admitted ones are written in groups, one transaction and one change
event per group (docs/enrollment.md, "Enrollment storms"), each decided in turn inside
it: a secret's quota, a node's cooldown and its previous key stay exact.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from enroll_service import metrics
from enroll_service.clone_watch import CloneWatch
from enroll_service.enroll_secrets import (
    ACTIVE,
    CLIENT_CERTIFICATE_SECRET_NAME,
    EXHAUSTED,
    EXPIRED,
    KIND_CLIENT_CERTIFICATE,
    KIND_SHARED,
    REVOKED,
    SHARED_SECRET_NAME,
    SecretRecord,
    hash_secret,
)
from enroll_service.host_details import HostFacts, parse_host_details
from enroll_service.node_feed import FEED, Event
from enroll_service.node_identity import has_certificate, node_identity
from enroll_service.node_messages import certificate_json, key_only, node_message
from enroll_service.rate_limits import RATE_LIMITED, RATE_LIMITED_REASON, EnrollRateLimits
from enroll_service.shared_secret import current_secret, secret_matches
from enroll_service.store import NewNode, NodeRecord, NodeStore
from protos.v1 import enroll_pb2
from quarry.runtime.group_commit import GroupCommit
from quarry.runtime.settings import Settings
from quarry.state.change_log import ChangeLog

log = logging.getLogger(__name__)

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


class Enrollment:
    def __init__(
        self, settings: Settings, store: NodeStore, changes: ChangeLog, clones: CloneWatch
    ) -> None:
        self._settings = settings
        self._store = store
        self._changes = changes
        self._clones = clones
        self._rate_limits = EnrollRateLimits(settings)
        # Enrollments arriving together share one transaction and change event.
        self._groups: GroupCommit[Attempt, enroll_pb2.EnrollResponse] = GroupCommit(
            self._write_group, MAX_ENROLL_GROUP, metrics.ENROLL_GROUP_SIZE.observe
        )

    async def close(self) -> None:
        await self._groups.close()

    async def enroll_all(
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
                answers[index] = _refuse(request, checked)
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
        details_json, facts = parse_host_details(request.host_details_json)
        host_identifier = request.host_identifier or facts.hostname or facts.hardware_uuid
        identity = self._identity(request, host_identifier, facts)
        state = secret.state(now)
        # A quota counts machines: one the secret already counted may re-enroll with it.
        if state == EXHAUSTED and self._store.knows_machine(secret.secret_id, identity):
            state = ACTIVE
        if state != ACTIVE:
            return Refusal(*SECRET_REFUSALS[state])
        if not self._rate_limits.secret_allows(secret.secret_id, request.remote_addr):
            return Refusal(RATE_LIMITED_REASON, RATE_LIMITED)
        return Attempt(
            request=request,
            secret=secret,
            now=now,
            host_identifier=host_identifier,
            identity=identity,
            details_json=details_json,
            facts=facts,
        )

    async def _write_group(self, attempts: list[Attempt]) -> list[enroll_pb2.EnrollResponse]:
        """One transaction and one change event for the whole group (group commit; a
        group of one sends its changes one by one, as before groups existed)."""
        events: list[enroll_pb2.NodeEvent] = []
        with self._changes.recording() as record:
            outcomes = [self._enroll_one(attempt, events) for attempt in attempts]
            if len(attempts) == 1:
                for event in events:
                    record(FEED, event)
            elif events:
                record(FEED, Event(kind=Event.GROUP, group=events))
        await self._changes.settled()
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
            os_version=facts.os_version,
            host_details_json=attempt.details_json,
            client_certificate_json=certificate_json(attempt.request.client_certificate),
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
            events.append(Event(kind=Event.REMOVE, node=key_only(node, enrollment.replaced_key)))
        events.append(Event(kind=Event.UPSERT, node=node, revision=enrollment.node.revision))
        return Enrolled(node, known_before=previous is not None)

    def _answer(self, attempt: Attempt, outcome: Enrolled | Refusal) -> enroll_pb2.EnrollResponse:
        """After the commit: the answer, its metrics and its log line."""
        if isinstance(outcome, Refusal):
            return _refuse(attempt.request, outcome)
        node = outcome.node
        self._clones.note(attempt.identity, attempt.now)
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
        wait_s = self._clones.policy.cooldown_left(self._clones.history(identity, now), now)
        if wait_s:
            return Refusal(cooldown_reason(wait_s), "cooldown")
        return None


def _refuse(request: enroll_pb2.EnrollRequest, refusal: Refusal) -> enroll_pb2.EnrollResponse:
    metrics.ENROLLMENTS.labels(refusal.outcome).inc()
    log.warning(
        "enrollment refused (%s): host %r from %s",
        refusal.reason,
        request.host_identifier,
        request.remote_addr or "unknown address",
    )
    return enroll_pb2.EnrollResponse(ok=False, reason=refusal.reason)


def _success_outcome(node: enroll_pb2.Node, known_before: bool) -> str:
    if node.pending:
        return "pending"
    return "reenrolled" if known_before else "enrolled"
