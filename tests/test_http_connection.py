"""The gateway's HTTP/1.1 server (gateway/http_connection.py) over real TLS, raw sockets.

A Listener with a few test routes runs on uvloop in a background thread, as a gateway
process runs it (gateway/serving.py) but without the gateway's state; the client is a
plain TLS socket writing bytes, so every edge case is exactly what goes over the wire:
keep-alive, pipelining, chunked bodies, Expect: 100-continue, head and body limits,
HEAD, HTTP/1.0, malformed requests, deadlines, the idle timeout, graceful shutdown, and
the TLS buffers' pages handed back after a large body (gateway/read_buffers.py).
The osquery endpoints over the same server are in tests/test_hostile_input.py and the
other cluster tests.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import uvloop
from prometheus_client import REGISTRY

from gateway import connection_sweep
from gateway.connection_sweep import ConnectionSweep
from gateway.http_connection import MAX_HEAD_BYTES, SPENT_BYTES, HttpConnection, Listener
from gateway.request_body import BadRequest, BodyLimits
from gateway.routing import Answer, GatewayApp, Request, Route
from quarry.encryption.gateway_certificates import ensure_certificates
from tests.polling import eventually

MAX_BODY = 1000
BODY_TIMEOUT_S = 0.5
HEAD_TIMEOUT_S = 0.5
LIMITS = BodyLimits(MAX_BODY, 10_000, 1000, 1000, BODY_TIMEOUT_S)
LARGE_LIMITS = BodyLimits(4 << 20, 4 << 20, 1000, 1000, 10.0)
RELEASED = "quarry_gateway_tls_buffer_released_bytes_total"


class Echo(Route):
    """Answers at once with what it received."""

    def body_limits(self, state: object) -> BodyLimits:
        return LIMITS

    async def serve(self, request: Request) -> Answer:
        return Answer(orjson.dumps({"path": request.path, "body": request.body.decode()}))

    def refuse(self, request: Request, refusal: BadRequest) -> Answer:
        return Answer(orjson.dumps({"error": str(refusal)}), refusal.status, refusal.close)


class Mirror(Echo):
    """Answers with the body it received, whatever its size (up to LARGE_LIMITS)."""

    def body_limits(self, state: object) -> BodyLimits:
        return LARGE_LIMITS

    async def serve(self, request: Request) -> Answer:
        return Answer(request.body)


class Slow(Echo):
    """Has to wait before it answers, like a log POST waiting for ingest's ack."""

    async def serve(self, request: Request) -> Answer:
        await asyncio.sleep(0.2)
        return await super().serve(request)


@dataclass
class Server:
    port: int
    ca_file: Path
    loop: asyncio.AbstractEventLoop
    listener: Listener
    sweep: ConnectionSweep

    def call(self, function, *args):  # type: ignore[no-untyped-def]
        """Run `function` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(_call(function, *args), self.loop).result(10)


async def _call(function, *args):  # type: ignore[no-untyped-def]
    return function(*args)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    files = ensure_certificates(tmp_path / "tls", ["localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    loop = uvloop.new_event_loop()
    started: dict = {}
    ready = threading.Event()

    async def start() -> None:
        sweep = ConnectionSweep(keep_alive_timeout_s=1.0)
        sweep.start()
        app = GatewayApp(
            {"/echo": Echo(), "/slow": Slow(), "/mirror": Mirror()}, _nothing, _nothing
        )
        listener = Listener(app, None, sweep, HEAD_TIMEOUT_S)
        server = await loop.create_server(listener.connection, "127.0.0.1", 0, ssl=context)
        started.update(
            port=server.sockets[0].getsockname()[1], listener=listener, sweep=sweep, server=server
        )
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(10)
    yield Server(started["port"], files.ca_cert, loop, started["listener"], started["sweep"])
    loop.call_soon_threadsafe(started["server"].close)
    loop.call_soon_threadsafe(started["sweep"].stop)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


async def _nothing(*args: object) -> None:
    return None


@pytest.fixture(autouse=True)
def quick_idle_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_sweep, "IDLE_SCAN_INTERVAL_S", 0.2)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return orjson.loads(self.body)


class Client:
    """A TLS socket and a reader of HTTP/1.1 answers."""

    def __init__(self, server: Server) -> None:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.tls = context.wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)

    def _fill(self) -> bool:
        data = self.tls.recv(65536)
        self.buffer += data
        return bool(data)

    def reply(self, head_only: bool = False) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"closed before an answer; got {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])
        }
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill(), "closed inside a body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(int(lines[0].split()[1]), headers, body)

    def closed(self) -> bool:
        """Whether the server closed the connection (after whatever is buffered)."""
        try:
            return not self._fill()
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.tls.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    connection = Client(server)
    yield connection
    connection.close()


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: localhost", f"Content-Length: {len(body)}"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode() + body


def test_a_kept_alive_connection_serves_request_after_request(client: Client) -> None:
    for n in range(3):
        client.send(post("/echo", b"%d" % n))
        reply = client.reply()
        assert (reply.status, reply.json()) == (200, {"path": "/echo", "body": str(n)})
        assert reply.headers["content-type"] == "application/json"
        assert "connection" not in reply.headers and "date" in reply.headers


def test_pipelined_requests_are_answered_in_order_around_one_that_waits(
    client: Client,
) -> None:
    client.send(post("/echo", b"1") + post("/slow", b"2") + post("/echo", b"3"))
    assert [client.reply().json()["body"] for _ in range(3)] == ["1", "2", "3"]
    client.send(post("/echo", b"4"))  # and the connection reads again afterwards
    assert client.reply().json()["body"] == "4"


def test_a_chunked_body_is_read_and_its_size_counted(client: Client) -> None:
    chunked = ["POST /echo HTTP/1.1", "Host: x", "Transfer-Encoding: chunked"]
    client.send(("\r\n".join(chunked) + "\r\n\r\n").encode() + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert client.reply().json()["body"] == "abcde"
    piece = b"x" * 600
    client.send(("\r\n".join(chunked) + "\r\n\r\n").encode() + b"258\r\n" + piece + b"\r\n")
    client.send(b"258\r\n" + piece + b"\r\n")  # past the limit without declaring a size
    reply = client.reply()
    assert reply.status == 413 and reply.headers["connection"] == "close"
    assert reply.json() == {"error": f"request body exceeds {MAX_BODY} bytes"}
    assert client.closed()


def test_a_declared_size_over_the_limit_is_refused_before_the_body(client: Client) -> None:
    client.send(post("/echo", b"x" * (MAX_BODY + 1))[: -MAX_BODY - 1])  # the head only
    reply = client.reply()
    assert reply.status == 413 and reply.headers["connection"] == "close"
    assert client.closed()


def test_expect_100_continue_is_answered_before_the_body(client: Client) -> None:
    client.send(post("/echo", b"abc", "Expect: 100-continue")[:-3])
    assert client.reply(head_only=True).status == 100
    client.send(b"abc")
    assert client.reply().json()["body"] == "abc"


def test_expect_100_continue_with_a_body_too_large_gets_the_refusal(client: Client) -> None:
    client.send(post("/echo", b"x" * (MAX_BODY + 1), "Expect: 100-continue")[: -MAX_BODY - 1])
    assert client.reply().status == 413
    assert client.closed()


def test_a_head_over_the_limit_is_refused_with_431(client: Client) -> None:
    client.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n")
    reply = client.reply()
    assert reply.status == 431 and reply.headers["connection"] == "close"
    assert client.closed()


def test_a_request_that_is_not_http_gets_400_in_plain_text(client: Client) -> None:
    client.send(b"NOT HTTP AT ALL\r\n\r\n")
    reply = client.reply()
    assert (reply.status, reply.body) == (400, b"Invalid HTTP request received.")
    assert reply.headers["content-type"].startswith("text/plain")
    assert client.closed()


def test_head_gets_the_headers_without_the_body(client: Client) -> None:
    client.send(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.reply(head_only=True)
    assert reply.status == 200 and int(reply.headers["content-length"]) > 0
    client.send(post("/echo", b"after"))  # nothing of a body came between
    assert client.reply().json()["body"] == "after"


def test_http_1_0_closes_after_the_answer_unless_asked_to_keep_alive(server: Server) -> None:
    kept, once = Client(server), Client(server)
    try:
        kept.send(post("/echo", b"a", "Connection: keep-alive", version="1.0"))
        assert "connection" not in kept.reply().headers
        kept.send(post("/echo", b"b", "Connection: keep-alive", version="1.0"))
        assert kept.reply().json()["body"] == "b"
        once.send(post("/echo", b"a", version="1.0"))
        assert once.reply().headers["connection"] == "close"
        assert once.closed()
    finally:
        kept.close()
        once.close()


def test_connection_close_from_the_client_is_honoured(client: Client) -> None:
    client.send(post("/echo", b"a", "Connection: close"))
    assert client.reply().headers["connection"] == "close"
    assert client.closed()


def test_unknown_paths_and_methods_get_plain_text_404_and_405(client: Client) -> None:
    client.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.reply()
    assert (reply.status, reply.body) == (404, b"Not Found")
    client.send(b"DELETE /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.reply()
    assert (reply.status, reply.body, reply.headers["allow"]) == (
        405,
        b"Method Not Allowed",
        "GET, HEAD, POST",
    )
    client.send(b"GET /ech%6F?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # percent-decoded path
    assert client.reply().json()["path"] == "/echo"


def test_a_stalled_body_gets_408_and_a_stalled_head_is_closed(server: Server) -> None:
    body, head = Client(server), Client(server)
    try:
        body.send(post("/echo", b"0123456789")[:-5])
        reply = body.reply()
        assert reply.status == 408 and reply.headers["connection"] == "close"
        assert "not received within" in reply.json()["error"]
        head.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert head.closed()
    finally:
        body.close()
        head.close()


def test_the_deadline_is_armed_only_while_a_request_is_still_arriving(
    server: Server, client: Client
) -> None:
    def watched() -> list[float]:
        return sorted(c.deadline for c in server.listener.sweep.watched)  # type: ignore[attr-defined]

    client.send(post("/echo", b"warm"))
    client.reply()
    assert server.call(watched) == []  # a whole request in one read: no deadline at all
    client.send(post("/echo", b"0123456789")[:-5])
    assert eventually(lambda: len(server.call(watched)) == 1)
    client.send(b"56789")
    assert client.reply().json()["body"] == "0123456789"
    assert server.call(watched) == []


def test_an_idle_connection_keeps_no_request_and_closes_after_the_keep_alive_timeout(
    server: Server, client: Client
) -> None:
    client.send(post("/slow", b"x"))
    client.reply()

    def state() -> list[object]:
        (connection,) = server.listener.sweep.connections
        assert isinstance(connection, HttpConnection)
        assert not hasattr(connection, "__dict__")
        return [
            connection.parser,
            connection.request,
            connection.route,
            connection.body_parts,
            connection.pipeline,
        ]

    assert server.call(state) == [None] * 5
    assert client.closed()  # the fixture's keep-alive timeout is 1 s


def test_shutdown_answers_the_request_under_way_and_closes_idle_connections(
    server: Server,
) -> None:
    busy, idle = Client(server), Client(server)
    try:
        idle.send(post("/echo", b"i"))
        idle.reply()
        busy.send(post("/slow", b"b"))
        assert eventually(lambda: server.call(lambda: len(server.listener.tasks)) == 1)
        server.call(server.listener.shut_down)
        reply = busy.reply()
        assert reply.json()["body"] == "b" and reply.headers["connection"] == "close"
        assert busy.closed() and idle.closed()
    finally:
        busy.close()
        idle.close()


def released_bytes() -> float:
    return REGISTRY.get_sample_value(RELEASED) or 0.0


def test_after_a_large_body_the_tls_buffers_spare_pages_go_back_and_the_connection_serves_on(
    server: Server, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_sweep, "SPENT_QUIET_S", 0.3)  # 25 s in production
    before = released_bytes()
    client.send(post("/echo", b"small"))
    assert client.reply().json()["body"] == "small"
    assert server.call(lambda: len(server.sweep.spent)) == 0  # small requests: nothing to do
    large = bytes(range(256)) * 2400  # 600 KB, every byte value: corruption would show
    assert len(large) > 8 * SPENT_BYTES
    for _ in range(2):  # the second one lands in pages handed back after the first
        client.send(post("/mirror", large))
        assert client.reply().body == large
        assert eventually(lambda floor=before: released_bytes() > floor)
        assert server.call(lambda: len(server.sweep.spent)) == 0
        # uvloop's 256 KB read buffer, all but the page its allocator's header shares.
        assert released_bytes() - before >= 255 * 1024
        before = released_bytes()
    client.send(post("/echo", b"after") + post("/mirror", large[:100]))
    assert client.reply().json()["body"] == "after"
    assert client.reply().body == large[:100]
