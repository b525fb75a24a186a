"""The gateway's HTTP/1.1 server: one asyncio protocol per TLS connection, httptools' parser.

Why the gateway has its own (docs/adr/0016-own-http-server.md): osquery sends each request
alone on one of thousands of idle keep-alive connections, so what a server does per
request and keeps per connection is most of the gateway's cost. uvicorn builds an ASGI
scope, a cycle object, an asyncio.Event and a task for every request and re-arms a
keep-alive timer after it; here a request whose endpoint answers from memory (a check-in,
a distributed read, a config) is parsed, served and answered inside the one
`data_received` call that brought it: no task, no timer, one write.

What one connection does, following a request:

- `data_received` feeds httptools' parser; its callbacks collect the target and the
  headers (the first of repeated names wins, names lower-cased, at most MAX_HEAD_BYTES),
  then the body, counted against the route's limit as it arrives (gateway/routing.py,
  gateway/request_body.py): a declared or received size over the limit is refused at
  once, with `connection: close`, and the rest of the connection is not read.
- When the message is complete its route's coroutine is started right there; if it
  finishes without waiting (nearly always), the answer is written. If it must wait (a
  log batch waiting for ingest's ack, a distributed write, an enrollment), a task
  carries on from where it stopped, and the answer is written when it is done.
- Pipelined requests are answered in order: while one is in flight the next ones wait
  in a list and reading pauses.
- Deadlines and the keep-alive timeout are one coarse sweep for all connections
  (gateway/connection_sweep.py): a connection notes a time in a slot, nothing more.
- The connection keeps nothing of a finished request, not even a parser (one is made
  when the next request begins to arrive), and its attributes are slots.

HTTP/1.1 as supported (tests/test_http_connection.py): keep-alive (HTTP/1.0 only when
asked), pipelining, Content-Length and chunked bodies (trailers ignored), `Expect:
100-continue` (answered `100 Continue` unless the body is refused first; not while
another request of the connection is in flight), HEAD, absolute-form targets, percent-
encoded paths. Not supported: upgrades (the request is answered, then the connection
closed), HTTP/2.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Coroutine, Generator
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from gateway import metrics
from gateway.client_certificates import PeerCertificate, peer_certificate
from gateway.connection_sweep import SWEEP_INTERVAL_S, ConnectionSweep
from gateway.read_buffers import release_spare_pages
from gateway.request_body import (
    BadRequest,
    BodyLimits,
    declared_too_large,
    disconnected,
    too_large,
    too_slow,
)
from gateway.routing import ALLOW, METHODS, Answer, GatewayApp, Request, Route

log = logging.getLogger(__name__)

# The request line and headers together; osquery sends a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
# What one read of decrypted data may bring; a larger body comes in several reads.
READ_BUFFER_BYTES = 64 * 1024
# A body or answer at least this large leaves its connection's TLS buffers grown (eight
# pages or more each); the sweep hands those pages back once the connection carries no
# more for a while (gateway/connection_sweep.py, gateway/read_buffers.py).
SPENT_BYTES = 32 * 1024

# What the connection is reading.
BETWEEN = 0  # no request begun
HEAD = 1  # a request line or headers
BODY = 2  # the body of the request whose head is in `request`
DISCARD = 3  # the rest of a refused request: nothing more is read

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
JSON_TYPE = b"content-type: application/json\r\ncontent-length: "
TEXT_TYPE = b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
END_OF_HEAD = b"\r\n\r\n"
CLOSE_AND_END = b"\r\nconnection: close\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NOT_FOUND = b"Not Found"
NOT_ALLOWED = b"Method Not Allowed"
ALLOW_HEADER = b"allow: " + ALLOW.encode() + b"\r\n"
INVALID = b"Invalid HTTP request received."
HEAD_TOO_LARGE = b"Request Header Fields Too Large"

# Bound once: looking a labelled child up costs a lock and a dict on every connection.
ACCEPTED = metrics.TLS_CONNECTIONS.labels("accepted")
ESTABLISHED = metrics.TLS_CONNECTIONS.labels("established")


class Listener:
    """What every connection of one gateway process shares: routes, state, sweep."""

    def __init__(
        self, app: GatewayApp, state: Any, sweep: ConnectionSweep, head_timeout_s: float
    ) -> None:
        self.routes = app.routes
        self.state = state
        self.sweep = sweep
        self.head_timeout_s = head_timeout_s
        self.loop = asyncio.get_running_loop()
        self.shutting_down = False
        # Every connection's decrypted reads land here and are parsed at once
        # (HttpConnection.buffer_updated), so one buffer serves them all.
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        # Requests that had to wait: held here (the loop keeps only weak references to
        # tasks) and waited for at shutdown.
        self.tasks: set[asyncio.Task] = set()

    def connection(self) -> HttpConnection:
        """The protocol factory for loop.create_server."""
        return HttpConnection(self)

    def shut_down(self) -> None:
        """Close every connection that has no request under way; the others after theirs."""
        self.shutting_down = True
        for connection in list(self.sweep.connections):
            connection.close_if_between_requests()  # type: ignore[attr-defined]

    @property
    def open_connections(self) -> int:
        return len(self.sweep.connections)


class _HeadTooLarge(Exception):
    pass


class _NotReading(Exception):
    """Raised from a parser callback to stop parsing once the connection is closing."""


class HttpConnection(asyncio.BufferedProtocol):
    """One TLS connection: parses its requests, serves them, writes their answers.

    A buffered protocol: uvloop's TLS transport decrypts into the listener's shared buffer
    (`get_buffer`) rather than into a new bytes object per read, which it would allocate
    at 256 KB and shrink, an mmap, mremap and munmap per request (docs/performance.md,
    "The gateway's own HTTP server").
    """

    __slots__ = (
        "body_parts",
        "busy",
        "certificate",
        "closing",
        "deadline",
        "head_bytes",
        "headers",
        "idle_since",
        "limits",
        "listener",
        "parser",
        "pipeline",
        "read_paused",
        "reading",
        "received",
        "request",
        "route",
        "transport",
        "url",
        "write_paused",
    )  # fmt: skip

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        # Made when a request begins to arrive, dropped between requests: a parser holds
        # no state between messages, costs 0.26 µs to make and 0.9 KB to keep.
        self.parser: httptools.HttpRequestParser | None = None
        self.certificate: PeerCertificate | None = None
        self.reading = BETWEEN
        self.deadline = 0.0  # watched by the sweep while not 0.0
        self.idle_since = 0.0  # between requests, since the last answer; 0.0 otherwise
        self.busy = False  # a request's task is under way
        self.closing = False  # nothing more is read; close once the answers are out
        self.read_paused = self.write_paused = False
        self.pipeline: list | None = None  # requests waiting for the one in flight
        self._forget_request()
        ACCEPTED.inc()

    def _forget_request(self) -> None:
        self.url = b""
        self.headers: dict[str, str] | None = None
        self.head_bytes = 0
        self.request: Request | None = None
        self.route: Route | None = None
        self.limits: BodyLimits | None = None
        self.body_parts: list[bytes] | None = None
        self.received = 0

    # --- Connection: what a request knows of its connection ----------------------------

    @property
    def client(self) -> tuple[str, int] | None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple | list) and len(peer) >= 2:
            return str(peer[0]), int(peer[1])
        return None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called once the TLS handshake succeeded (never after a failed one)."""
        self.transport = transport  # type: ignore[assignment]
        ESTABLISHED.inc()
        metrics.OPEN_CONNECTIONS.inc()
        self.certificate = peer_certificate(transport)
        self.listener.sweep.connections.add(self)
        if self.listener.shutting_down:
            self._close()
        else:
            self._watch(self.listener.head_timeout_s)  # the first request's head

    def connection_lost(self, exc: Exception | None) -> None:
        sweep = self.listener.sweep
        sweep.connections.discard(self)
        sweep.watched.discard(self)
        sweep.spent.pop(self, None)
        if self.transport is not None:
            metrics.OPEN_CONNECTIONS.dec()
        if self.reading == BODY and self.route is not None and self.request is not None:
            self.route.refuse(self.request, disconnected())  # counted; nobody to answer
        self.closing = True
        self.pipeline = self.parser = None
        self._forget_request()
        # A request's task runs to its end (a log batch is still stored); its answer is
        # dropped (_write).

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.listener.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.listener.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """What the peer sent: parsed at once (the parser copies what it keeps)."""
        if self.closing:
            return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # answered as HTTP; what follows is not HTTP/1.1
            if not self.busy and not self.pipeline:
                self._close()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse_connection(431, HEAD_TOO_LARGE)
            elif not self.closing:
                self._refuse_connection(400, INVALID)
        else:
            if self.reading == BETWEEN:
                self.parser = None
            elif self.deadline == 0.0:
                if self.reading == HEAD:
                    self._watch(self.listener.head_timeout_s)
                elif self.reading == BODY:
                    timeout = self.limits.timeout_s if self.limits else self.listener.head_timeout_s
                    self._watch(timeout)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    # --- httptools' callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:
            raise _NotReading
        self.reading = HEAD
        self.idle_since = 0.0
        self.headers = {}
        if self.deadline != 0.0:
            self._unwatch()  # the connection's wait for a head; the request's own may follow

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        key = name.lower().decode("latin-1")
        headers = self.headers
        if key not in headers:  # type: ignore[operator]
            # llhttp keeps trailing whitespace, which RFC 9110 §5.5 leaves out of the value.
            headers[key] = value.rstrip(b" \t").decode("latin-1")  # type: ignore[index]

    def on_headers_complete(self) -> None:
        if self.deadline != 0.0:
            self._unwatch()
        self.reading = BODY
        listener = self.listener
        path, query = _target(self.url)
        self.url = b""
        method = self.parser.get_method().decode("ascii", "replace")
        request = self.request = Request(method, path, query, self.headers, self, listener.state)  # type: ignore[arg-type]
        self.headers = None
        route = listener.routes.get(path)
        if route is None or method not in METHODS:
            return  # answered at the end of the message; its body is not kept
        self.route, self.limits, self.body_parts = route, route.body_limits(listener.state), []
        refusal = declared_too_large(request.headers.get("content-length"), self.limits)
        if refusal is not None:
            self._refuse_body(refusal)
        elif (
            request.headers.get("expect", "").lower() == "100-continue"
            and not self.busy
            and not self.pipeline
        ):
            self.transport.write(CONTINUE)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        if self.reading != BODY:
            return
        self.received += len(body)
        if self.body_parts is None:
            return  # no route takes it: not kept
        if self.received > self.limits.max_bytes:  # type: ignore[union-attr]
            self._refuse_body(too_large(self.limits.max_bytes))  # type: ignore[union-attr]
            return
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.reading != BODY:
            return
        if self.deadline != 0.0:
            self._unwatch()
        request, route, parts = self.request, self.route, self.body_parts
        if self.received >= SPENT_BYTES:
            self.listener.sweep.spent[self] = self.listener.sweep.now
        self._forget_request()
        self.reading = BETWEEN
        if parts:
            request.body = parts[0] if len(parts) == 1 else b"".join(parts)  # type: ignore[union-attr]
        request.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
        if self.busy or self.pipeline:
            self._queue((route, request))
        else:
            self._serve(route, request)  # type: ignore[arg-type]

    # --- serving -----------------------------------------------------------------------

    def _serve(self, route: Route | None, request: Request) -> None:
        """Answer now if the route can; otherwise a task finishes it (_served_later)."""
        if route is None:
            known = request.path in self.listener.routes
            status, text = (405, NOT_ALLOWED) if known else (404, NOT_FOUND)
            self._write(
                request, status, TEXT_TYPE, text, False, ALLOW_HEADER if status == 405 else b""
            )
            return
        coroutine = route.serve(request)
        try:
            waiting_for = coroutine.send(None)
        except StopIteration as done:
            self._answer(request, done.value)
            return
        except Exception:
            log.exception("%s failed", request.path)
            self._answer(request, Answer(b'{"error":"internal server error"}', 500))
            return
        self.busy = True
        task = self.listener.loop.create_task(_resumed(coroutine, waiting_for))
        self.listener.tasks.add(task)
        task.add_done_callback(lambda done: self._served_later(request, done))

    def _served_later(self, request: Request, task: asyncio.Task) -> None:
        self.listener.tasks.discard(task)
        self.busy = False
        if task.cancelled():
            self._close()
            return
        error = task.exception()
        if error is not None:
            log.error("%s failed", request.path, exc_info=error)
            self._answer(request, Answer(b'{"error":"internal server error"}', 500))
        else:
            self._answer(request, task.result())
        self._next_in_pipeline()

    def _answer(self, request: Request, answer: Answer) -> None:
        self._write(request, answer.status, JSON_TYPE, answer.body, answer.close)

    def _write(
        self,
        request: Request,
        status: int,
        content_type: bytes,
        body: bytes,
        close: bool,
        extra_headers: bytes = b"",
    ) -> None:
        """The whole answer in one write; then the connection closes or waits, idle."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away while its request was served
        close = close or not request.keep_alive or self.listener.shutting_down
        if close:
            self.closing = True
        transport.write(
            b"".join(
                (
                    STATUS_LINES[status],
                    b"date: ",
                    self.listener.sweep.date,
                    b"\r\n",
                    extra_headers,
                    content_type,
                    b"%d" % len(body),
                    CLOSE_AND_END if close else END_OF_HEAD,
                    b"" if request.method == "HEAD" else body,
                )
            )
        )
        if close:
            self._close()
            return
        if len(body) >= SPENT_BYTES:
            self.listener.sweep.spent[self] = self.listener.sweep.now
        if self.reading == BETWEEN and not self.pipeline:
            self.idle_since = self.listener.sweep.now

    def _queue(self, item: tuple[Route | None, Request] | bytes) -> None:
        """Behind the request in flight; reading pauses until the queue is served."""
        if self.pipeline is None:
            self.pipeline = []
        self.pipeline.append(item)
        self._update_reading()

    def _next_in_pipeline(self) -> None:
        while self.pipeline and not self.busy and not self._closed():
            item = self.pipeline.pop(0)
            if isinstance(item, bytes):
                self.transport.write(item)  # type: ignore[union-attr]
                self._close()
            else:
                self._serve(*item)
        if not self.pipeline:
            self.pipeline = None
            self._update_reading()
        if self.closing and not self.busy and not self.pipeline:
            self._close()

    # --- refusals, deadlines, closing --------------------------------------------------

    def _refuse_body(self, refusal: BadRequest) -> None:
        """Answer the request whose body is refused (as its route answers it), then close."""
        request, route = self.request, self.route
        self._forget_request()
        self.reading = DISCARD
        answer = route.refuse(request, refusal)  # type: ignore[union-attr, arg-type]
        request.keep_alive = False  # type: ignore[union-attr]
        if self.busy or self.pipeline:
            self._queue((_Refused(answer), request))  # type: ignore[arg-type]
        else:
            self._answer(request, answer)  # type: ignore[arg-type]
        self.closing = True

    def _refuse_connection(self, status: int, text: bytes) -> None:
        """A request that is not HTTP, or whose head is too large: plain text, then close."""
        self.closing = True
        self.reading = DISCARD
        self._forget_request()
        answer = b"".join(
            (
                STATUS_LINES[status],
                b"date: ",
                self.listener.sweep.date,
                b"\r\n",
                TEXT_TYPE,
                b"%d" % len(text),
                CLOSE_AND_END,
                text,
            )
        )
        if self.busy or self.pipeline:
            self._queue(answer)
        else:
            self.transport.write(answer)  # type: ignore[union-attr]
            self._close()

    def _watch(self, timeout_s: float) -> None:
        sweep = self.listener.sweep
        # One sweep interval more, so a deadline never fires early on the coarse clock.
        self.deadline = sweep.now + timeout_s + SWEEP_INTERVAL_S
        sweep.watched.add(self)

    def _unwatch(self) -> None:
        self.deadline = 0.0
        self.listener.sweep.watched.discard(self)

    def deadline_passed(self) -> None:
        """From the sweep: a head or body did not arrive in time."""
        self._unwatch()
        if self.reading == BODY and self.route is not None:
            self._refuse_body(too_slow(self.limits))  # type: ignore[arg-type]
        elif not self.busy:
            self._close()  # a head that never ended, or no request at all: nothing to say

    def idle_too_long(self) -> None:
        """From the sweep: idle past the keep-alive timeout."""
        self._close()

    def release_spare_pages(self) -> None:
        """From the sweep, after a large body or answer: its TLS buffers' spare pages back."""
        if self.transport is not None and not self.transport.is_closing():
            metrics.TLS_BUFFER_BYTES_RELEASED.inc(release_spare_pages(self.transport))

    def close_if_between_requests(self) -> None:
        """At shutdown: a connection without a request under way closes now."""
        if not self.busy and not self.pipeline and self.reading in (BETWEEN, HEAD):
            self._close()

    def _update_reading(self) -> None:
        transport = self.transport
        pause = bool(self.pipeline) or self.write_paused
        if transport is None or pause == self.read_paused or transport.is_closing():
            return
        self.read_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # what was written is still sent


class _Refused(Route):
    """A refusal waiting its turn in the pipeline: serving it is answering it."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    async def serve(self, request: Request) -> Answer:
        return self.answer


def _target(url: bytes) -> tuple[str, bytes]:
    """The path (percent-decoded) and the query string of a request target."""
    if url[:1] == b"/":
        raw_path, _, query = url.partition(b"?")
    else:  # absolute form, e.g. https://host/path
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return "", b""
        raw_path, query = parsed.path or b"", parsed.query or b""
    path = raw_path.decode("latin-1")
    return (unquote(path) if "%" in path else path), query


@types.coroutine
def _resumed(
    coroutine: Coroutine[Any, Any, Answer], waiting_for: Any
) -> Generator[Any, Any, Answer]:
    """Carry on a coroutine already started by hand, which yielded `waiting_for`.

    What `await` does for the coroutine of a task, from its second step on: each future it
    waits for goes to the task, and what the task sends or throws back goes to it.
    """
    while True:
        try:
            sent = yield waiting_for
        except BaseException as exc:  # the task's cancellation, passed on
            try:
                waiting_for = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_for = coroutine.send(sent)
            except StopIteration as done:
                return done.value
