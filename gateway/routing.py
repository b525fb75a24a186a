"""What an endpoint sees and what the gateway's HTTP server calls: requests, answers, routes.

The osquery endpoints need no web framework: their paths are fixed strings, every answer
is one JSON body, and errors are answered by the endpoints themselves
(gateway/osquery_api.py). So this module is all the framework the gateway has:

- `Request`: one request as the HTTP server (gateway/http_connection.py) parsed it, its
  whole body already received within the route's limits;
- `Answer`: a JSON body, its status, and whether to close the connection after it;
- `Route`: what the server calls for a path: the body limits to read within, the
  endpoint, and the answer to a body it refused while reading it;
- `GatewayApp`: the routes by path, and the start-up and shutdown of the state requests
  see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

if TYPE_CHECKING:
    from gateway.client_certificates import PeerCertificate
    from gateway.request_body import BadRequest, BodyLimits

# The methods every route answers; anything else is 405 (HEAD is GET without a body).
METHODS = frozenset({"GET", "HEAD", "POST"})
ALLOW = ", ".join(sorted(METHODS))


class Connection(Protocol):
    """What a request knows of the connection it came on (gateway/http_connection.py)."""

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's (host, port)."""

    @property
    def certificate(self) -> PeerCertificate | None:
        """The client certificate the TLS handshake verified, if the peer sent one."""


class Request:
    """One request; `state` is what the app's start-up returned."""

    __slots__ = ("body", "connection", "headers", "keep_alive", "method", "path", "query", "state")

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: dict[str, str],
        connection: Connection | None,
        state: Any,
    ) -> None:
        self.method, self.path, self.query = method, path, query
        # Lower-case names; the first of repeated headers wins.
        self.headers = headers
        self.connection, self.state = connection, state
        self.body = b""  # as received: compressed when Content-Encoding says gzip
        self.keep_alive = True

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's (host, port)."""
        return self.connection.client if self.connection is not None else None

    @property
    def certificate(self) -> PeerCertificate | None:
        """The client certificate the TLS handshake verified, if the peer sent one."""
        return self.connection.certificate if self.connection is not None else None

    @property
    def query_params(self) -> dict[str, str]:
        return dict(reversed(parse_qsl(self.query.decode("latin-1"))))


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer; `close` ends the connection after it (the rest of the body is unread)."""

    body: bytes
    status: int = 200
    close: bool = False


class Route:
    """A path's endpoint, as the HTTP server calls it.

    `body_limits` is asked once the head is complete, so an oversized or stalled body is
    refused while it arrives; `refuse` answers such a body (counted like any answer of the
    endpoint); `serve` answers a request whose body was received.
    """

    def body_limits(self, state: Any) -> BodyLimits:
        raise NotImplementedError

    def serve(self, request: Request) -> Coroutine[Any, Any, Answer]:
        raise NotImplementedError

    def refuse(self, request: Request, refusal: BadRequest) -> Answer:
        raise NotImplementedError


Startup = Callable[[], Awaitable[Any]]  # returns the state requests see
Shutdown = Callable[[Any], Awaitable[None]]


@dataclass(slots=True)
class GatewayApp:
    """The routes by path, and the start-up and shutdown of the state they answer from."""

    routes: dict[str, Route]
    startup: Startup
    shutdown: Shutdown
