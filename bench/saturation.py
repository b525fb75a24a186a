"""A closed-loop driver that finds a server's ceiling for one osquery request.

C keep-alive HTTPS connections, each made with the emulator's osquery-like client, send the
same request back to back for D seconds; the answer is judged as osquery would (a body that
is not JSON, or that holds `error` or `node_invalid`, is an error). Pointed at Quarry's
gateway or at the bare Starlette server, it measures both "in the same way", so their
figures can be divided.

A request's body is fixed bytes, or a function of the request's number, so a log POST can
change its content each time (the same bytes twice would be dropped as a duplicate).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.emulator.http_client import (
    HttpConnection,
    ServerAddress,
    osquery_headers,
)
from tests.emulator.response import judge_response

OSQUERY_VERSION = "5.23.1"
REQUEST_TIMEOUT_S = 16.0  # osquery's own limit per exchange
MAX_ERROR_EXAMPLES = 5

RequestBody = bytes | Callable[[int], bytes]


@dataclass(frozen=True)
class SaturationTarget:
    """Where to send what: one endpoint of one server, with osquery's headers."""

    address: ServerAddress
    ssl_context: ssl.SSLContext
    path: str
    body: RequestBody
    node_key: str = ""
    osquery_version: str = OSQUERY_VERSION
    compressed: bool = False  # bodies are gzip (--logger_tls_compress)

    def headers(self) -> list[tuple[str, str]]:
        return osquery_headers(
            version=self.osquery_version,
            host_header=self.address.host_header,
            node_key=self.node_key,
            compressed=self.compressed,
        )

    def body_for(self, number: int) -> bytes:
        return self.body(number) if callable(self.body) else self.body


@dataclass
class SaturationResult:
    requests: int = 0  # answered within the timed window, errors included
    errors: int = 0
    duration_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    error_examples: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, fraction: float) -> float | None:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        rank = max(math.ceil(fraction * len(ordered)), 1)
        return round(ordered[rank - 1] * 1000, 3)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "p50_ms": self.percentile_ms(0.50),
            "p95_ms": self.percentile_ms(0.95),
            "p99_ms": self.percentile_ms(0.99),
            "error_examples": self.error_examples,
        }


class SaturationRun:
    """The shared state of one run: the request counter and the result being filled."""

    def __init__(self, target: SaturationTarget) -> None:
        self.target = target
        self.headers = target.headers()
        self.result = SaturationResult()
        self.next_number = 0

    def take_body(self) -> bytes:
        self.next_number += 1
        return self.target.body_for(self.next_number)

    async def send(self, connection: HttpConnection) -> str:
        """One request; "" when osquery would accept the answer, else why not."""
        try:
            response = await connection.request(
                "POST", self.target.path, self.headers, self.take_body()
            )
        except (OSError, EOFError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        verdict = judge_response(response.body)
        return "" if verdict.ok else f"HTTP {response.status}: {verdict.message}"

    async def loop(self, connection: HttpConnection, deadline: float) -> None:
        while (started := time.perf_counter()) < deadline:
            problem = await self.send(connection)
            finished = time.perf_counter()
            if finished > deadline:
                break  # answered after the window closed: not part of the rate
            self.record(finished - started, problem)

    def record(self, latency_s: float, problem: str) -> None:
        self.result.requests += 1
        self.result.latencies_s.append(latency_s)
        if problem:
            self.result.errors += 1
            if len(self.result.error_examples) < MAX_ERROR_EXAMPLES:
                self.result.error_examples.append(problem)


async def saturate(
    target: SaturationTarget, *, connections: int, duration_s: float
) -> SaturationResult:
    """Drive `connections` keep-alive connections flat out for `duration_s` seconds.

    Each connection first sends one untimed request, so TLS handshakes stay out of the
    figures (osquery keeps its connections open too).
    """
    if connections < 1 or duration_s <= 0:
        raise ValueError("connections must be >= 1 and duration_s > 0")
    run = SaturationRun(target)
    pool = [
        HttpConnection(target.address, target.ssl_context, timeout_s=REQUEST_TIMEOUT_S)
        for _ in range(connections)
    ]
    try:
        await asyncio.gather(*(run.send(connection) for connection in pool))
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(*(run.loop(connection, deadline) for connection in pool))
        run.result.duration_s = duration_s
    finally:
        for connection in pool:
            connection.close()
    return run.result


def run_saturation(
    target: SaturationTarget, *, connections: int, duration_s: float
) -> SaturationResult:
    """`saturate` on a fresh event loop (uvloop when installed, as servers use)."""
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(saturate(target, connections=connections, duration_s=duration_s))


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
