"""POST-to-visible latency: how long after osquery sends a log POST its rows can be queried.

An open loop sends log POSTs at a fixed, moderate rate (by default 20 per second of 1,024
lines: well under the closed-loop ceiling, so the figure is the pipeline's latency rather
than queueing behind a saturated server). Every POST carries its own `counter`, so its rows
can be told apart in ClickHouse. Meanwhile a poller asks the log store, every
POLL_INTERVAL_S, how many rows each pending POST has; a POST is visible once all its lines
are. Its latency runs from just before its request is sent to the poll reply that first
counted every line, so it overstates the truth by at most one poll interval plus one poll
round trip (reported: the log store answers slower when busy).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.saturation import REQUEST_TIMEOUT_S, SaturationTarget
from protos.v1 import logs_pb2, logs_pb2_grpc
from tests.emulator.http_client import HttpConnection
from tests.emulator.response import judge_response

POLL_INTERVAL_S = 0.05
SETTLE_TIMEOUT_S = 60.0  # after the last POST: rows not visible by then count as missing
MAX_ERROR_EXAMPLES = 5

# Given the lowest counter still pending, the rows stored so far per counter at or above it.
RowCounter = Callable[[int], Awaitable[dict[int, int]]]


def rows_per_counter(stub: logs_pb2_grpc.LogStoreStub, query_name: str) -> RowCounter:
    """Rows stored per log `counter` of one query, from `lowest` up, read through LogStore.

    LogStore is the gRPC service `quarry sql` calls: the one reader that works for embedded
    chdb as for a ClickHouse server.
    """

    async def count(lowest: int) -> dict[int, int]:
        sql = (
            f"SELECT counter, count() AS n FROM quarry.results "
            f"WHERE name = '{query_name}' AND counter >= {lowest} GROUP BY counter"
        )
        reply = await stub.Query(logs_pb2.SqlRequest(sql=sql), timeout=30)
        if reply.error:
            raise RuntimeError(reply.error)
        return {int(c): int(n) for c, n in map(orjson.loads, reply.rows_json)}

    return count


@dataclass
class PostTiming:
    """One POST's life: sent, acknowledged by the gateway, all its rows visible."""

    sent_at: float
    acked_at: float | None = None
    visible_at: float | None = None
    problem: str = ""


@dataclass
class VisibilityResult:
    rate_per_s: float
    duration_s: float
    lines_per_post: int
    posts: dict[int, PostTiming] = field(default_factory=dict)  # by counter
    polls: int = 0
    poll_seconds: float = 0.0  # summed round trips of the answered polls
    poll_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        acked = [p.acked_at - p.sent_at for p in self.posts.values() if p.acked_at]
        visible = [p.visible_at - p.sent_at for p in self.posts.values() if p.visible_at]
        problems = [p.problem for p in self.posts.values() if p.problem]
        return {
            "rate_per_s": self.rate_per_s,
            "duration_s": self.duration_s,
            "lines_per_post": self.lines_per_post,
            "poll_interval_ms": POLL_INTERVAL_S * 1000,
            "polls": self.polls,
            "poll_round_trip_ms": (
                round(self.poll_seconds / self.polls * 1000, 1) if self.polls else None
            ),
            "posts_sent": len(self.posts),
            "errors": len(problems),
            "posts_visible": len(visible),
            "rows_visible": len(visible) * self.lines_per_post,
            "ack": latency_summary_ms(acked),
            "visible": latency_summary_ms(visible),
            "error_examples": (problems + self.poll_errors)[:MAX_ERROR_EXAMPLES],
        }


def latency_summary_ms(latencies_s: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50, p99 and the maximum, in milliseconds (None when there are none)."""
    ordered = sorted(latencies_s)

    def rank(fraction: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[max(math.ceil(fraction * len(ordered)), 1) - 1] * 1000, 1)

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": rank(1.0)}


class VisibilityProbe:
    """The open-loop sender and the poller of one measurement, sharing the POST timings."""

    def __init__(
        self, target: SaturationTarget, count_rows: RowCounter, result: VisibilityResult
    ) -> None:
        self.target = target
        self.headers = target.headers()
        self.count_rows = count_rows
        self.result = result
        self.sending = True
        self.next_counter = 1

    async def send_at_fixed_rate(self, pool: asyncio.Queue[HttpConnection]) -> None:
        """POST number n at start + n / rate, each on the next idle connection."""
        started = time.monotonic()
        total = max(round(self.result.rate_per_s * self.result.duration_s), 1)
        in_flight = []
        try:
            for index in range(total):
                due = started + index / self.result.rate_per_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                connection = await pool.get()  # every connection busy: this POST goes late
                in_flight.append(asyncio.create_task(self.post(connection, pool)))
            await asyncio.gather(*in_flight)
        finally:
            self.sending = False  # lets the poller finish even if sending failed

    async def post(self, connection: HttpConnection, pool: asyncio.Queue[HttpConnection]) -> None:
        counter = self.next_counter
        self.next_counter += 1
        timing = self.result.posts[counter] = PostTiming(sent_at=time.monotonic())
        try:
            timing.problem = await self.send(connection, counter)
            if not timing.problem:
                timing.acked_at = time.monotonic()
        finally:
            pool.put_nowait(connection)

    async def send(self, connection: HttpConnection, counter: int) -> str:
        """One POST whose rows carry `counter`; "" when osquery would accept the answer."""
        body = self.target.body_for(counter)
        try:
            response = await connection.request("POST", self.target.path, self.headers, body)
        except (OSError, EOFError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        verdict = judge_response(response.body)
        return "" if verdict.ok else f"HTTP {response.status}: {verdict.message}"

    def pending(self) -> list[int]:
        """Counters of POSTs whose rows are not all visible yet, failed POSTs left out."""
        return [
            counter
            for counter, timing in self.result.posts.items()
            if timing.visible_at is None and not timing.problem
        ]

    async def poll_until_visible(self) -> None:
        settle_deadline = math.inf
        while True:
            pending = self.pending()
            if not self.sending:
                if not pending:
                    return
                settle_deadline = min(settle_deadline, time.monotonic() + SETTLE_TIMEOUT_S)
                if time.monotonic() > settle_deadline:
                    return
            if pending:
                await self.poll_once(min(pending))
            await asyncio.sleep(POLL_INTERVAL_S)

    async def poll_once(self, lowest_counter: int) -> None:
        asked_at = time.monotonic()
        try:
            rows = await self.count_rows(lowest_counter)
        except Exception as exc:  # a failed poll is reported; the next one may succeed
            if len(self.result.poll_errors) < MAX_ERROR_EXAMPLES:
                self.result.poll_errors.append(f"poll: {type(exc).__name__}: {exc}")
            return
        answered_at = time.monotonic()
        self.result.polls += 1
        self.result.poll_seconds += answered_at - asked_at
        for counter, count in rows.items():
            timing = self.result.posts.get(counter)
            if timing and timing.visible_at is None and count >= self.result.lines_per_post:
                timing.visible_at = answered_at


async def measure_visibility(
    target: SaturationTarget,
    count_rows: RowCounter,
    *,
    lines_per_post: int,
    rate_per_s: float,
    duration_s: float,
    connections: int = 16,
) -> VisibilityResult:
    """Send rate_per_s POSTs a second for duration_s, and time each until its rows are visible.

    Each connection first sends one untimed POST, so TLS handshakes stay out of the figures;
    those POSTs' counters are below every measured one, and the poller never looks at them.
    """
    if rate_per_s <= 0 or duration_s <= 0 or connections < 1:
        raise ValueError("rate_per_s and duration_s must be > 0, connections >= 1")
    result = VisibilityResult(rate_per_s, duration_s, lines_per_post)
    probe = VisibilityProbe(target, count_rows, result)
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    opened = [
        HttpConnection(target.address, target.ssl_context, timeout_s=REQUEST_TIMEOUT_S)
        for _ in range(connections)
    ]
    try:
        warm_up = [probe.send(connection, n + 1) for n, connection in enumerate(opened)]
        await asyncio.gather(*warm_up)
        probe.next_counter = connections + 1
        for connection in opened:
            pool.put_nowait(connection)
        await asyncio.gather(probe.send_at_fixed_rate(pool), probe.poll_until_visible())
    finally:
        for connection in opened:
            connection.close()
    return result
