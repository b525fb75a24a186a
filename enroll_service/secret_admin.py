"""The admin of enroll secrets: create, list, revoke and rotate (docs/enrollment.md).

A secret's value is shown once, when it is made; only its hash is stored. Each change
calls `changed` so the secret gauges follow at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from enroll_service.enroll_secrets import (
    ACTIVE,
    KIND_CREATED,
    KIND_SHARED,
    SHARED_SECRET_NAME,
    InvalidPolicy,
    SecretRecord,
    hash_secret,
    new_secret_value,
    policy_from_request,
)
from enroll_service.shared_secret import current_secret
from enroll_service.store import NodeStore
from protos.v1 import enroll_pb2
from quarry.access.admin_auth import Refused
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewSecret:
    """A secret just made, and its value (never stored)."""

    record: SecretRecord
    value: str
    now: int


class SecretAdmin:
    def __init__(self, settings: Settings, store: NodeStore, changed: Callable[[], None]) -> None:
        self._settings = settings
        self._store = store
        self._changed = changed

    def sync_shared_secret(self) -> None:
        """Show the bootstrap secret as "default" in ListSecrets from the start."""
        shared = current_secret(self._settings)
        if shared:
            now = int(time.time())
            self._store.builtin_secret(KIND_SHARED, SHARED_SECRET_NAME, hash_secret(shared), now)

    def create(self, request: enroll_pb2.CreateSecretRequest) -> NewSecret:
        now = int(time.time())
        try:
            policy = policy_from_request(request, now)
        except InvalidPolicy as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        value = new_secret_value()
        record = self._store.create_secret(policy, KIND_CREATED, hash_secret(value), now)
        log.info("enroll secret %r created (%s)", record.name, record.secret_id)
        self._changed()
        return NewSecret(record, value, now)

    def list(self, include_inactive: bool, now: int) -> list[SecretRecord]:
        records = self._store.secrets()
        if include_inactive:
            return records
        return [record for record in records if record.state(now) == ACTIVE]

    def revoke(self, ref: str, now: int) -> SecretRecord:
        named = self._named(ref)
        revoked = self._store.revoke_secrets([record.secret_id for record in named], now)
        log.info("enroll secret %r revoked (%d secrets)", ref, len(revoked))
        self._changed()
        return revoked[-1]

    def rotate(self, ref: str, grace_seconds: int) -> NewSecret:
        """A new value for the secret; the old ones work for grace_seconds more."""
        if grace_seconds < 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "grace_seconds must be 0 or more")
        named = self._named(ref)
        if named[-1].kind != KIND_CREATED:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{named[-1].name!r} is a built-in secret; the default one is rotated by"
                " changing the secret file or QUARRY_ENROLL_SECRET",
            )
        current = [record for record in named if not record.revoked_at]
        if not current:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"every secret {ref!r} names is revoked; create a new one",
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
            expire_old_at=now + grace_seconds,
            now=now,
        )
        log.info(
            "enroll secret %r rotated; the old one works for %d s more", record.name, grace_seconds
        )
        self._changed()
        return NewSecret(record, value, now)

    def _named(self, ref: str) -> list[SecretRecord]:
        if not ref:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "name a secret (id or name)")
        named = self._store.secrets_by_ref(ref)
        if not named:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no enroll secret with id or name {ref!r}")
        return named
