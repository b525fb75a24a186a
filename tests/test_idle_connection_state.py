"""Unit test of gateway/idle_connections.py: what the gateway's HTTP protocol keeps between
requests. The protocol is driven as uvicorn drives it, over an in-memory transport; the
real TLS connections are in tests/test_open_connections.py."""

from __future__ import annotations

import asyncio

from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.connection_deadlines import HeadDeadlineProtocol
from gateway.idle_connections import FINISHED_CYCLE

REQUEST = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}"


class MemoryTransport(asyncio.Transport):
    """Collects what the protocol writes; no socket, so uvicorn reads the names below."""

    def __init__(self) -> None:
        super().__init__({"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 443)})
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def answer_json(scope: dict, receive: object, send: object) -> None:
    await receive()  # type: ignore[operator]
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]


async def served(requests: bytes) -> tuple[HeadDeadlineProtocol, MemoryTransport]:
    config = Config(answer_json, timeout_keep_alive=60)
    config.load()
    protocol = HeadDeadlineProtocol(config=config, server_state=ServerState(), app_state={})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    protocol.data_received(requests)
    for _ in range(20):  # the app tasks run; pipelined ones one after another
        await asyncio.sleep(0)
    return protocol, transport


def test_an_idle_connection_keeps_no_request_state_and_no_instance_dictionary() -> None:
    async def check() -> None:
        protocol, transport = await served(REQUEST)
        assert transport.written.startswith(b"HTTP/1.1 200 OK")
        assert protocol.cycle is FINISHED_CYCLE
        assert protocol.scope is None and protocol.headers is None
        # Every attribute lives in a slot: uvicorn added none this module does not know.
        assert vars(protocol) == {}
        protocol.connection_lost(None)

    asyncio.run(check())


def test_pipelined_requests_are_answered_in_order_then_released() -> None:
    async def check() -> None:
        protocol, transport = await served(REQUEST * 3)
        assert transport.written.count(b"HTTP/1.1 200 OK") == 3
        assert not protocol.pipeline
        assert protocol.cycle is FINISHED_CYCLE
        protocol.connection_lost(None)

    asyncio.run(check())


def test_a_body_arriving_after_the_answer_is_ignored() -> None:
    """The gateway may answer before a body is complete (a refusal); the rest may follow."""

    async def check() -> None:
        head = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\n\r\n{}"
        protocol, transport = await served(head)
        protocol.data_received(b"    ")  # the last 4 bytes of the declared body
        assert not transport.closed
        protocol.connection_lost(None)

    asyncio.run(check())
