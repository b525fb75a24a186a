"""The gateway's ASGI plumbing: a dict from path to endpoint, a request view, JSON answers.

A check-in costs the whole stack about 200 µs of CPU at the fleet target
(docs/performance.md, "The gateway's cost per request"), and a web framework's routing,
middleware stack and request and response objects cost about as much again. The osquery
endpoints need none of it: their paths are fixed strings, every answer is one JSON body,
and errors are answered by the endpoints themselves (gateway/osquery_api.py). So this
module is all the framework the gateway has:

- `Request`: what an endpoint reads of the ASGI scope (headers as a dict, the peer
  address, the query string) and the `receive` callable the body is read from;
- `Answer`: a JSON body, its status, and whether to close the connection after it,
  sent as two ASGI messages with header lists built once per kind of answer;
- `GatewayApp`: the ASGI application; it finds the endpoint by path (404 and 405 as
  plain text, as before), and runs start-up and shutdown in ASGI's lifespan protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")
CLOSE = (b"connection", b"close")
# The methods every endpoint answers; anything else is 405 (HEAD is GET without a body).
METHODS = frozenset({"GET", "HEAD", "POST"})
ALLOW = ", ".join(sorted(METHODS)).encode()


class Request:
    """One request as an endpoint sees it; `state` is what the app's start-up returned."""

    __slots__ = ("headers", "receive", "scope", "state")

    def __init__(self, scope: Scope, receive: Receive, state: Any) -> None:
        self.scope, self.receive, self.state = scope, receive, state
        # Lower-case names (the ASGI server lowers them); the first of repeated headers wins.
        self.headers: dict[str, str] = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in reversed(scope["headers"])
        }

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's (host, port), the key of gateway/client_certificates.py."""
        return self.scope.get("client")

    @property
    def query_params(self) -> dict[str, str]:
        return dict(reversed(parse_qsl(self.scope.get("query_string", b"").decode("latin-1"))))


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer; `close` ends the connection after it (the rest of the body is unread)."""

    body: bytes
    status: int = 200
    close: bool = False


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [JSON_TYPE, (b"content-length", b"%d" % len(answer.body))]
    if answer.close:
        headers.append(CLOSE)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def send_text(send: Send, status: int, text: bytes, extra: list | None = None) -> None:
    """A plain-text answer, for requests no endpoint takes (no JSON: not osquery's paths)."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(text)),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


Endpoint = Callable[[Request], Awaitable[Answer]]
Startup = Callable[[], Awaitable[Any]]  # returns the state requests see
Shutdown = Callable[[Any], Awaitable[None]]


class GatewayApp:
    """The ASGI application: `routes` maps each path to its endpoint."""

    def __init__(self, routes: dict[str, Endpoint], startup: Startup, shutdown: Shutdown) -> None:
        self.routes, self.startup, self.shutdown = routes, startup, shutdown
        self.state: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.routes.get(scope["path"])
            if endpoint is None:
                await send_text(send, 404, b"Not Found")
            elif scope["method"] not in METHODS:
                await send_text(send, 405, b"Method Not Allowed", [(b"allow", ALLOW)])
            else:
                await send_answer(send, await endpoint(Request(scope, receive, self.state)))
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websocket: uvicorn refuses the upgrade when the app does not accept it

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI's lifespan protocol: start-up before the first request, then shutdown."""
        await receive()  # lifespan.startup
        try:
            self.state = await self.startup()
        except BaseException as exc:
            log.exception("gateway start-up failed")
            await send({"type": "lifespan.startup.failed", "message": repr(exc)})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self.shutdown(self.state)
        finally:
            await send({"type": "lifespan.shutdown.complete"})
