"""Enrollment rate limits: token buckets per source address and per enroll secret.

Every enroll attempt takes a token from its source address's bucket, wrong secrets
included, so guessing and flooding from one place slow to the sustained rate. An
attempt with a valid secret also takes one from that secret's bucket, which bounds how
fast a leaked secret can mint nodes from many places. A bucket holds `burst` tokens
and refills at `rate_per_s`; a rate of 0 turns the limit off.
Loopback sources are exempt from both: they are the machine itself (a local emulated
fleet, a benchmark), and anyone there already holds more than an enroll secret.

Buckets live in memory, per enroll replica (with N replicas on PostgreSQL the cluster
admits up to N times the rates; docs/security.md says so), and a restart forgives. The
address table is bounded: full buckets are dropped first (a full bucket is the same as
no bucket), then the oldest, so many addresses cannot grow it without end.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from quarry.runtime.settings import Settings

RATE_LIMITED = "rate_limited"
RATE_LIMITED_REASON = "enrollment rate limit exceeded; retry later"
MAX_BUCKETS = 100_000


@dataclass
class Bucket:
    tokens: float
    updated_at: float


class TokenBuckets:
    """One token bucket per key, created full on first use."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(max(1, burst))
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: dict[str, Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self, key: str) -> bool:
        """Take one token for key; False when its bucket is empty (the attempt is refused)."""
        if not self.enabled:
            return True
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated_at) * self._rate)
        bucket.updated_at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def __len__(self) -> int:
        return len(self._buckets)

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self._max_buckets:
            return
        full_after_s = self._burst / self._rate
        for key in [k for k, b in self._buckets.items() if now - b.updated_at >= full_after_s]:
            del self._buckets[key]
        while len(self._buckets) >= self._max_buckets:
            del self._buckets[next(iter(self._buckets))]  # the oldest created


class EnrollRateLimits:
    """The two limits an enrollment passes: its source address, then its secret."""

    def __init__(self, settings: Settings) -> None:
        self.by_address = TokenBuckets(
            settings.enroll_rate_per_address_s, settings.enroll_burst_per_address
        )
        self.by_secret = TokenBuckets(
            settings.enroll_rate_per_secret_s, settings.enroll_burst_per_secret
        )

    def address_allows(self, remote_addr: str) -> bool:
        if is_loopback(remote_addr):
            return True
        # A request without an address (a direct gRPC call) shares one bucket.
        return self.by_address.take(remote_addr or "unknown")

    def secret_allows(self, secret_id: str, remote_addr: str) -> bool:
        return is_loopback(remote_addr) or self.by_secret.take(secret_id)


def is_loopback(remote_addr: str) -> bool:
    try:
        return ipaddress.ip_address(remote_addr).is_loopback
    except ValueError:
        return False
