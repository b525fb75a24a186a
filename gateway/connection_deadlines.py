"""A deadline for each request head, so a slow client cannot hold a connection open.

uvicorn times out idle keep-alive connections between requests, but not a connection
that never sends a request, nor one that sends its request line and headers a byte at
a time (slowloris). `HeadDeadlineProtocol` is the gateway's HTTP protocol class
(client certificates included) plus one timer: armed when the connection opens and
when a request begins, cancelled once its headers are complete; when it fires the
connection is closed. The body has its own deadline, in gateway/request_body.py.

Nearly every osquery request arrives with its whole head in one read, so the timer of a
request is armed only when a read ends with the head still incomplete: a request whose
head came at once costs no timer (docs/performance.md, "The gateway's cost per request").

The callbacks are those of uvicorn's httptools protocol, the one uvicorn picks when
httptools is installed (a Quarry dependency through uvicorn[standard]).
"""

from __future__ import annotations

import asyncio
from functools import cache

from gateway.client_certificates import ClientCertificateProtocol
from quarry.runtime.settings import Settings

# Import string for uvicorn.run(http=...): it re-imports the class in every worker.
PROTOCOL_IMPORT_STRING = "gateway.connection_deadlines:HeadDeadlineProtocol"


@cache
def head_timeout_s() -> float:
    """From the environment, which `quarry up` and worker processes all share."""
    return Settings.from_env().request_head_timeout_s


class HeadDeadlineProtocol(ClientCertificateProtocol):
    # No instance dictionary (gateway/idle_connections.py).
    __slots__ = ("_head_deadline", "_head_pending")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_pending = False  # a request began and its headers are not complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_pending and self._head_deadline is None:
            self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._cancel_head_deadline()  # the connection's: the request's own starts now
        self._head_pending = True

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._cancel_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(head_timeout_s(), self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
