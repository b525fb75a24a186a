"""Keeping an idle keep-alive connection small in gateway memory.

osquery holds one keep-alive TLS connection per plugin thread, so a gateway carries about
three per host, idle nearly all the time (docs/performance.md, "Idle keep-alive
connections", has the measurements). What one idle connection holds:

- OpenSSL's connection object, about 12 KB after the handshake (its read and write
  buffers are already released while idle: CPython sets SSL_MODE_RELEASE_BUFFERS);
- uvloop's TLS protocol: a 256 KB read buffer per connection, malloc'd once and kept
  until the connection closes (only the pages a read touched are resident), two memory
  BIOs and a few objects;
- uvicorn's HTTP protocol object, which also keeps the last request's scope (its headers,
  and what the app adds to it), its request/response cycle and that cycle's event.

Two things here cut what is ours to cut:

`LeanHttpToolsProtocol` is uvicorn's httptools protocol that lets go of the finished
request once its response is complete (the scope, the header list and the cycle); keeps
uvicorn's 28 attributes in slots (past about 26 attributes an instance dictionary stops
sharing its keys with the class's other instances and costs 1.5 KB of its own); and
keeps pipelined requests and flow-control waiters in lists rather than deques (a deque
costs about 600 bytes even when empty; pipelining is rare, and a connection's writer
waits alone).

The same protocol also writes each answer in one piece (`OneWriteCycle`): uvicorn writes
a response's head when the app starts it and its body when the app sends it, which over
TLS is two records and two send(2) calls per answer; held back and written with the
body, the head costs neither (docs/performance.md, "The gateway's cost per request").

`map_large_buffers_separately` pins glibc's mmap threshold at 256 KiB. By default glibc
raises that threshold the first time such a block is freed, after which every
connection's 256 KB read buffer is carved out of the heap; pages a closed connection
touched then stay resident as holes between newer objects, and RSS only grows. Pinned,
each buffer is a mapping of its own, returned to the system when its connection closes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger(__name__)

# uvloop's TLS read buffer (SSL_READ_MAX_SIZE): blocks this size and larger are mmapped.
MMAP_THRESHOLD_BYTES = 256 * 1024
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


class _FinishedCycle:
    """Stands in for the last request's cycle once its response is complete.

    uvicorn's callbacks read these attributes of the current cycle between requests (a
    client still sending a body the gateway already refused, a shutdown, a disconnect).
    """

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = asyncio.Event()  # set on disconnect; nothing waits on it


FINISHED_CYCLE = _FinishedCycle()


class _Pipeline(list):
    """The deque operations uvicorn uses on its pipeline of queued requests."""

    def appendleft(self, item: object) -> None:
        self.insert(0, item)


class _HeldHead:
    """Stands in for the transport while uvicorn writes a response's head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing the head of a response with its body.

    uvicorn's own `send` still does all the work (headers checked, keep-alive, lengths);
    only its write of the head is held until the body comes. A body of known length goes
    out in the same write; a chunked body, or none (HEAD), after the head as before.
    """

    held_head = b""

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            transport, held = self.transport, _HeldHead()
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            self.held_head = held.data
            return
        head, self.held_head = self.held_head, b""
        if head:
            if (
                message["type"] == "http.response.body"
                and self.chunked_encoding is False
                and self.scope["method"] != "HEAD"
            ):
                # Counted like the body, so uvicorn's length checks stay exact.
                self.expected_content_length += len(head)
                message = {**message, "body": head + message.get("body", b"")}
            elif not self.disconnected:
                self.transport.write(head)
        await super().send(message)


class LeanHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, keeping no per-request state while idle."""

    # Every attribute uvicorn 0.55 sets on the protocol; one it adds later lands in the
    # instance dictionary as before, costing memory, not correctness.
    __slots__ = (
        "access_log", "access_logger", "app", "app_state", "asgi_version", "client", "config",
        "connections", "cycle", "expect_100_continue", "flow", "headers", "limit_concurrency",
        "logger", "loop", "parser", "pipeline", "root_path", "scheme", "scope", "server",
        "server_state", "tasks", "timeout_keep_alive", "timeout_keep_alive_task", "transport",
        "url", "ws_protocol_class",
    )  # fmt: skip

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio.Event's waiters: append, iterate, remove; a list does all three.
        self.flow._is_writable_event._waiters = []  # type: ignore[attr-defined]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The cycle uvicorn just made (its task has not run yet); not a finished one kept
        # by an upgrade request, which returns early.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = OneWriteCycle

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request may already be the current cycle: keep that one.
        if self.cycle is not None and self.cycle.response_complete:
            self.cycle = FINISHED_CYCLE  # type: ignore[assignment]
            self.scope = None  # type: ignore[assignment]
            self.headers = None  # type: ignore[assignment]
            self.url = b""


def map_large_buffers_separately() -> bool:
    """Pin glibc's mmap threshold (see the module docstring); False where there is no glibc."""
    libc_name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt if libc_name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) unavailable: glibc's default applies")
        return False
    return True
