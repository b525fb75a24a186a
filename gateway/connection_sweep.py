"""One coarse sweep instead of a timer per request: idle keep-alive, head and body deadlines.

osquery holds about three keep-alive connections per host, idle nearly all the time, and
sends each request alone (docs/performance.md, "The gateway's cost per request"). A timer
armed and cancelled per request (uvicorn's keep-alive timer, a body deadline) is a heap
push, a handle object and a cancellation each time; instead each connection notes a time
in a slot, read from `ConnectionSweep.now`, a clock this sweep advances every
SWEEP_INTERVAL_S (a float shared by every connection noting it, so noting costs nothing).

- A connection waiting for a request head (a new one, or one whose last read ended inside
  a head) or a body still arriving is *watched*, with its deadline; the sweep looks at the
  watched ones every SWEEP_INTERVAL_S, so a slow client (slowloris, a stalled body) is
  cut off within its deadline plus about a second. Nearly every osquery request comes with
  its head and body in one read, and is never watched.
- An idle keep-alive connection notes when its last answer went out; every
  IDLE_SCAN_INTERVAL_S the sweep looks at all connections and closes those idle for
  longer than the keep-alive timeout (75 s; osquery reconnects when it needs to), then
  hands the heap's free pages back to the system (gateway/read_buffers.py): what the TLS
  handshakes of new connections allocated and freed.
- It also formats the Date header once a second, for every answer of that second.
- A connection that carried a large body or answer is *spent*: once it has carried none
  for SPENT_QUIET_S, the idle scan hands back the pages its TLS buffers grew into
  (gateway/read_buffers.py), away from the request path and never inside a read. A
  connection that keeps carrying large bodies (a logger sending big batches every 10 s)
  keeps its pages: handing them back each time would cost a page fault per page on the
  next body, and a TLB flush on every core for each release.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Protocol

from gateway.read_buffers import return_free_memory

SWEEP_INTERVAL_S = 0.5
IDLE_SCAN_INTERVAL_S = 5.0
KEEP_ALIVE_TIMEOUT_S = 75.0  # as uvicorn had it: osquery keeps one connection per plugin thread
# Longer than osquery's busiest interval (logger_tls_period, 10 s by default, Fleet's too).
SPENT_QUIET_S = 25.0


class Swept(Protocol):
    """A connection as the sweep sees it (gateway/http_connection.py)."""

    deadline: float  # 0.0: no deadline
    idle_since: float  # 0.0: not idle (a request under way)

    def deadline_passed(self) -> None: ...

    def idle_too_long(self) -> None: ...

    def release_spare_pages(self) -> None: ...


class ConnectionSweep:
    """The clock, the watched connections and the idle scan of one gateway process."""

    def __init__(self, keep_alive_timeout_s: float = KEEP_ALIVE_TIMEOUT_S) -> None:
        self.keep_alive_timeout_s = keep_alive_timeout_s
        self.connections: set[Swept] = set()
        self.watched: set[Swept] = set()
        # Connections that carried a large body or answer -> when they last did.
        self.spent: dict[Swept, float] = {}
        self.now = time.monotonic()
        self.date = _http_date()
        self._date_at = int(time.time())
        self._next_idle_scan = self.now + IDLE_SCAN_INTERVAL_S
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep()

    def sweep(self) -> None:
        """Advance the clock, cut off watched connections past their deadline, scan idle and
        spent ones."""
        self.now = now = time.monotonic()
        wall = int(time.time())
        if wall != self._date_at:
            self._date_at, self.date = wall, _http_date()
        for connection in [c for c in self.watched if 0.0 < c.deadline <= now]:
            connection.deadline_passed()
        if now >= self._next_idle_scan:
            self._next_idle_scan = now + IDLE_SCAN_INTERVAL_S
            oldest = now - self.keep_alive_timeout_s
            for connection in [c for c in self.connections if 0.0 < c.idle_since <= oldest]:
                connection.idle_too_long()
            quiet_since = now - SPENT_QUIET_S
            for connection in [c for c, t in self.spent.items() if t <= quiet_since]:
                del self.spent[connection]
                connection.release_spare_pages()
            return_free_memory()


def _http_date() -> bytes:
    return formatdate(usegmt=True).encode("ascii")
