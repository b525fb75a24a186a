"""The API process's own metrics: requests by route template, method and status, their
latency, and the event streams and downloads open now (docs/observability.md).

Labels are bounded: a route is its template (`/api/v1/hosts/{host}`, never the host),
`unmatched` for a path no route has, and the status is the HTTP code. Latency is measured
to the answer's first byte (its status line and headers): an event stream or a download
lasts as long as the client reads, which says nothing about how fast the API answers.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "quarry_api_requests_total",
    "HTTP requests the API and console answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "quarry_api_request_duration_seconds",
    "Time from a request's arrival to its answer's first byte, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STREAMS_OPEN = Gauge(
    "quarry_api_streams_open",
    "Answers still being sent, by kind: events (Server-Sent Events of a live query),"
    " download (a carve), export (a live query's rows as CSV or JSON).",
    ["kind"],
)
IN_FLIGHT = Gauge("quarry_api_requests_in_flight", "HTTP requests being answered now.")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
for _kind in ("events", "download", "export"):
    STREAMS_OPEN.labels(_kind)


def route_label(scope: Scope) -> str:
    """The template of the innermost route that answered, `unmatched` for none."""
    route: Any = scope.get("route")
    path = getattr(route, "path", "")
    return path or "unmatched"


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}  # an exception escaping every handler answers 500
        method = scope["method"] if scope["method"] in METHODS else "other"

        async def measured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                REQUEST_DURATION.labels(route_label(scope), method).observe(
                    time.perf_counter() - started
                )
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, measured_send)
        finally:
            IN_FLIGHT.dec()
            REQUESTS.labels(route_label(scope), method, str(status["code"])).inc()


class OpenStream:
    """Counts an answer being streamed while its body generator runs (a context manager)."""

    def __init__(self, kind: str) -> None:
        self._gauge = STREAMS_OPEN.labels(kind)

    def __enter__(self) -> None:
        self._gauge.inc()

    def __exit__(self, *exc: object) -> None:
        self._gauge.dec()
