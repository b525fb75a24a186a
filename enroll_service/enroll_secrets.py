"""Enroll secrets: how values are made and hashed, and the state a secret is in.

A secret is 32 random bytes (token_urlsafe), so a plain SHA-256 of it is as good as a
slow password hash and gives an O(1) lookup by hash; only that hash is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from protos.v1 import enroll_pb2

# The bootstrap shared secret (QUARRY_ENROLL_SECRET or the secret file) is this row.
SHARED_SECRET_NAME = "default"
# Enrollment by a verified client certificate alone, when that is allowed, uses this row.
CLIENT_CERTIFICATE_SECRET_NAME = "client-certificate"
RESERVED_NAMES = (SHARED_SECRET_NAME, CLIENT_CERTIFICATE_SECRET_NAME)

# Kinds of row: created by an admin (looked up by hash), or one of the two built-in ones.
KIND_CREATED = "created"
KIND_SHARED = "shared"
KIND_CLIENT_CERTIFICATE = "client_certificate"

ACTIVE = "active"
EXPIRED = "expired"
REVOKED = "revoked"
EXHAUSTED = "exhausted"
STATES = (ACTIVE, EXPIRED, REVOKED, EXHAUSTED)


def new_secret_value() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class SecretPolicy:
    """What an admin chooses for a secret; a rotation copies it to the new secret."""

    name: str
    tags: tuple[str, ...] = ()
    group: str = ""
    expires_at: int = 0
    max_enrollments: int = 0
    one_time: bool = False
    requires_approval: bool = False
    allows_reenrollment_after_revocation: bool = False


@dataclass(frozen=True)
class SecretRecord:
    secret_id: str
    kind: str
    policy: SecretPolicy
    created_at: int
    enrollments: int
    last_used_at: int
    revoked_at: int

    @property
    def name(self) -> str:
        return self.policy.name

    def state(self, now: int) -> str:
        """Revoked before expired before exhausted: the order a refusal is reported in."""
        if self.revoked_at:
            return REVOKED
        if self.policy.expires_at and self.policy.expires_at <= now:
            return EXPIRED
        if self.policy.max_enrollments and self.enrollments >= self.policy.max_enrollments:
            return EXHAUSTED
        if self.policy.one_time and self.enrollments >= 1:
            return EXHAUSTED
        return ACTIVE


def secret_message(record: SecretRecord, now: int) -> enroll_pb2.EnrollSecret:
    policy = record.policy
    return enroll_pb2.EnrollSecret(
        secret_id=record.secret_id,
        name=policy.name,
        tags=policy.tags,
        group=policy.group,
        created_at=record.created_at,
        expires_at=policy.expires_at,
        max_enrollments=policy.max_enrollments,
        enrollments=record.enrollments,
        last_used_at=record.last_used_at,
        one_time=policy.one_time,
        requires_approval=policy.requires_approval,
        allows_reenrollment_after_revocation=policy.allows_reenrollment_after_revocation,
        revoked_at=record.revoked_at,
        state=record.state(now),
    )


class InvalidPolicy(ValueError):
    """A CreateSecret request that cannot become a secret; the message says why."""


def policy_from_request(request: enroll_pb2.CreateSecretRequest, now: int) -> SecretPolicy:
    name = request.name.strip()
    if not name:
        raise InvalidPolicy("a secret needs a name")
    if name in RESERVED_NAMES:
        raise InvalidPolicy(f"the name {name!r} is reserved for a built-in secret")
    tags = [tag.strip() for tag in request.tags]
    if not all(tags):
        raise InvalidPolicy("tags must not be empty")
    if request.expires_at < 0 or 0 < request.expires_at <= now:
        raise InvalidPolicy(f"expires_at {request.expires_at} is not in the future")
    if request.max_enrollments < 0:
        raise InvalidPolicy("max_enrollments must be 0 (no quota) or more")
    return SecretPolicy(
        name=name,
        tags=tuple(dict.fromkeys(tags)),
        group=request.group.strip(),
        expires_at=request.expires_at,
        max_enrollments=request.max_enrollments,
        one_time=request.one_time,
        requires_approval=request.requires_approval,
        allows_reenrollment_after_revocation=request.allows_reenrollment_after_revocation,
    )
