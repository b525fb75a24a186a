"""Getting each audit entry to the enroll service, even when it is down for a while.

A service other than enroll sends each admin call's audit entry with RecordAudit. When
that fails (enroll restarting, the network away), the entry is kept in memory and sent
again, in order, with backoff, until it is stored. While some are waiting, new entries
queue behind them so the log stays in call order. The queue is bounded: past
MAX_PENDING the oldest are dropped and counted, so an enroll outage can not exhaust
the process's memory. Every entry not stored at once is also written to the process
log (warning), which is the record of last resort. Pending entries live only in memory:
a process that stops while some are pending loses them (they remain in its log).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import text_format
from prometheus_client import Counter, Gauge

from protos.v1 import enroll_pb2

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0
# A drop is logged for the first one and then every this many, not for each of thousands.
DROP_LOG_EVERY = 1000

AUDIT_PENDING = Gauge(
    "quarry_admin_audit_pending",
    "Audit entries of admin calls not yet stored by the enroll service (retried in order).",
    multiprocess_mode="livesum",
)
AUDIT_DROPPED = Counter(
    "quarry_admin_audit_dropped_total",
    "Audit entries dropped, oldest first, because too many were pending (see the log).",
)

SendEntry = Callable[[enroll_pb2.AuditEntry], Awaitable[object]]


class AuditDelivery:
    """The bounded retry queue of one process's audit entries."""

    def __init__(
        self,
        send: SendEntry,
        max_pending: int = MAX_PENDING,
        first_retry_s: float = FIRST_RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
    ) -> None:
        self._send = send
        self._max_pending = max_pending
        self._first_retry_s = first_retry_s
        self._max_retry_s = max_retry_s
        self._pending: deque[enroll_pb2.AuditEntry] = deque()
        self._retrying: asyncio.Task[None] | None = None
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def deliver(self, entry: enroll_pb2.AuditEntry) -> None:
        """Store entry now when nothing is waiting and the enroll service answers; else
        queue it for the retry task."""
        if not self._pending:
            try:
                await self._send(entry)
                return
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "audit entry not stored yet (%s), will retry: %s", _reason(exc), _line(entry)
                )
        else:
            log.warning(
                "audit entry queued behind %d pending: %s", len(self._pending), _line(entry)
            )
        self._keep(entry)

    def _keep(self, entry: enroll_pb2.AuditEntry) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.dropped += 1
            AUDIT_DROPPED.inc()
            if self.dropped == 1 or self.dropped % DROP_LOG_EVERY == 0:
                log.warning(
                    "audit queue full (%d pending): dropped the oldest entry (%d so far)",
                    self._max_pending,
                    self.dropped,
                )
        self._pending.append(entry)
        AUDIT_PENDING.set(len(self._pending))
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry_pending())

    async def _retry_pending(self) -> None:
        delay = self._first_retry_s
        while self._pending:
            await asyncio.sleep(delay)
            try:
                await self._send_pending()
            except grpc.aio.AioRpcError as exc:
                delay = min(delay * 2, self._max_retry_s)
                log.warning(
                    "%d audit entries pending (%s); next try in %.1fs",
                    len(self._pending),
                    _reason(exc),
                    delay,
                )
        log.info("pending audit entries stored")

    async def _send_pending(self) -> None:
        """Send the oldest entries one by one, in order, until none is left or one fails."""
        while self._pending:
            head = self._pending[0]
            await self._send(head)
            # While it was sent the queue may have overflowed and dropped it already.
            if self._pending and self._pending[0] is head:
                self._pending.popleft()
            AUDIT_PENDING.set(len(self._pending))


def _reason(exc: grpc.aio.AioRpcError) -> str:
    return exc.code().name


def _line(entry: enroll_pb2.AuditEntry) -> str:
    return text_format.MessageToString(entry, as_one_line=True)
