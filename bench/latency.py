"""A compact latency recorder: log-spaced histogram buckets, mergeable, cheap per sample.

Each sample costs one `math.log2` and one list increment, so a load generator can record
hundreds of thousands of requests per second. Buckets are 1/8 of a power of two wide (about
9%), so a percentile is known to within about 5%, which is plenty to compare runs.
"""

from __future__ import annotations

import math

BUCKETS_PER_DOUBLING = 8
MAX_BUCKET = BUCKETS_PER_DOUBLING * 40  # 2**40 us is about 12 days: nothing lasts longer


class LatencyHistogram:
    """Counts of samples per log-spaced bucket of microseconds."""

    __slots__ = ("buckets", "count", "max_s", "total_s")

    def __init__(self) -> None:
        self.buckets = [0] * (MAX_BUCKET + 1)
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        micros = seconds * 1e6
        index = int(math.log2(micros) * BUCKETS_PER_DOUBLING) + 1 if micros >= 1 else 0
        self.buckets[min(index, MAX_BUCKET)] += 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add `other`'s samples to this one."""
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile_s(self, fraction: float) -> float | None:
        """The latency below which `fraction` of samples fall (bucket midpoint); None if empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, samples in enumerate(self.buckets):
            seen += samples
            if seen >= rank:
                return min(bucket_midpoint_s(index), self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, mean, p50, p95, p99 and max, in milliseconds (None when empty)."""
        return {
            "count": self.count,
            "mean_ms": _ms(self.total_s / self.count) if self.count else None,
            "p50_ms": _ms(self.percentile_s(0.50)),
            "p95_ms": _ms(self.percentile_s(0.95)),
            "p99_ms": _ms(self.percentile_s(0.99)),
            "max_ms": _ms(self.max_s) if self.count else None,
        }


def bucket_midpoint_s(index: int) -> float:
    """The geometric middle of bucket `index`, in seconds (bucket 0 holds everything < 1 us)."""
    if index == 0:
        return 0.5e-6
    low_exponent = (index - 1) / BUCKETS_PER_DOUBLING
    return 2 ** (low_exponent + 0.5 / BUCKETS_PER_DOUBLING) / 1e6


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
