"""Proof that a process's event loop turns: the heartbeat behind /livez, and its lag.

Every Quarry process does its work on one asyncio loop (the gateway's workers each on
their own; the gRPC services on the loop that serves their aio server). A task on that loop
wakes every BEAT_INTERVAL_S and notes when it ran. The metrics endpoint runs in its own
thread (quarry/runtime/metrics_endpoint.py), so it keeps answering while the loop is stuck
in a blocking call or a busy loop: /livez compares the last turn with the clock and answers
503 once the loop has not turned for longer than the window (QUARRY_LIVENESS_WINDOW_S),
which is what a liveness probe needs to restart a wedged process (docs/observability.md,
"Liveness").

How late each wake-up came is the loop's lag: the time callbacks wait for the loop, which
every request waiting on this process waits too. The gauge holds the largest lag of the
last LAG_WINDOW_S.

In prometheus-client's multiprocess mode (a gateway with workers) both gauges live in the
workers' files; the parent's /livez reads the oldest last turn of its live workers.
"""

from __future__ import annotations

import asyncio
import collections
import time

from prometheus_client import Gauge

BEAT_INTERVAL_S = 0.5
LAG_WINDOW_S = 10.0

LAG = Gauge(
    "quarry_event_loop_lag_seconds",
    "How late the event loop ran a timer, the largest of the last 10 s: how long work "
    "waits for this process's loop (the worst worker's, on a gateway with workers).",
    multiprocess_mode="livemax",
)
LAST_TURN_METRIC = "quarry_event_loop_last_turn_timestamp_seconds"
LAST_TURN = Gauge(
    LAST_TURN_METRIC,
    "When the event loop last turned (Unix time; the oldest of the gateway's workers). "
    "/livez answers 503 when it is older than QUARRY_LIVENESS_WINDOW_S.",
    multiprocess_mode="livemin",
)

_last_turn: float | None = None  # time.time() of the last turn of this process's loop
_watching: asyncio.Task[None] | None = None


def start_loop_watch() -> None:
    """Watch the running loop (once per process: later calls while it runs do nothing)."""
    global _watching
    if _watching is None or _watching.done():
        _watching = asyncio.get_running_loop().create_task(_beat(), name="loop-watch")


async def _beat() -> None:
    lags: collections.deque[float] = collections.deque(maxlen=int(LAG_WINDOW_S / BEAT_INTERVAL_S))
    due = time.monotonic()
    while True:
        now = time.monotonic()
        lags.append(max(0.0, now - due))
        LAG.set(max(lags))
        note_turn(time.time())
        due = now + BEAT_INTERVAL_S
        await asyncio.sleep(BEAT_INTERVAL_S)


def note_turn(at: float) -> None:
    global _last_turn
    _last_turn = at
    LAST_TURN.set(at)


def last_turn() -> float | None:
    """When this process's loop last turned; None before it is watched (starting up)."""
    return _last_turn
