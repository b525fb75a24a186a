"""A minimal HTTP/1.1 client over asyncio and TLS that behaves like osquery's on the wire.

osquery (Boost.Beast) keeps one keep-alive connection per plugin thread, sends a fixed set
of headers in a fixed order, gives each exchange 16 s in total, and when the first try fails
for any reason other than a timeout it reconnects and sends the same request once more
(spec §2.2-§2.4). `HttpConnection` is one such connection; `osquery_headers` builds the
headers. No third-party HTTP library: the exact header order and the resend matter, and
the benchmark runs thousands of these in one process.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_TIMEOUT_S = 16.0
HTTPS_PORT = 443
MAX_HEADER_BYTES = 8 * 1024  # Boost.Beast's default header limit
MAX_BODY_BYTES = 8 * 1024 * 1024  # Boost.Beast's default response body limit
MAX_REDIRECTS = 10
REDIRECT_CODES = frozenset({301, 302, 303, 304, 305, 307, 308})
NO_BODY_CODES = frozenset({204, 304})

# osquery 5.23.1's TLS 1.2 cipher list (tls.h); TLS 1.3 suites are OpenSSL's defaults.
OSQUERY_TLS12_CIPHERS = (
    "ECDH+AESGCM:DH+AESGCM:ECDH+AES256:DH+AES256:ECDH+AES128:DH+AES:ECDH+3DES:DH+3DES:"
    "RSA+AESGCM:RSA+AES:RSA+3DES:!aNULL:!MD5:!CBC:!SHA"
)

# Failures on the first try that make osquery reconnect and re-send (everything but a timeout).
RESENDABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes ssl.SSLError, ConnectionResetError, ConnectionRefusedError
    EOFError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)


class HttpProtocolError(EOFError):
    """The server's answer was not valid HTTP/1.1 (or broke a limit osquery enforces)."""


@dataclass
class HttpCounters:
    """Counts of what the client did; one instance may be shared by many connections."""

    requests: int = 0  # requests written to the wire, resends and redirects included
    resends: int = 0  # transparent resends after a failed first try
    connections: int = 0  # TLS connections opened
    redirects: int = 0
    failures: int = 0  # calls that ended without any response (timeout or second failure)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names; the last of repeated headers wins
    body: bytes


@dataclass(frozen=True)
class ServerAddress:
    """osquery's `--tls_hostname`: `host[:port][/path-prefix]`, no scheme."""

    host: str
    port: int
    path_prefix: str = ""

    @classmethod
    def parse(cls, tls_hostname: str) -> ServerAddress:
        host_port, slash, prefix = tls_hostname.partition("/")
        parts = urlsplit(f"https://{host_port}")
        if not parts.hostname:
            raise ValueError(f"no host in tls_hostname {tls_hostname!r}")
        prefix = f"/{prefix}".rstrip("/") if slash else ""
        return cls(parts.hostname, parts.port or HTTPS_PORT, prefix)

    @property
    def host_header(self) -> str:
        return self.host if self.port == HTTPS_PORT else f"{self.host}:{self.port}"


def osquery_ssl_context(
    ca_file: str | Path, client_cert: str | Path | None = None, client_key: str | Path | None = None
) -> ssl.SSLContext:
    """A client context like osquery's: TLS 1.2+, the server CA pinned, hostname checked."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(OSQUERY_TLS12_CIPHERS)
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return context


def osquery_headers(
    *,
    version: str,
    host_header: str,
    node_key: str = "",
    compressed: bool = False,
    accept_gzip: bool = False,
) -> list[tuple[str, str]]:
    """osquery's request headers in its insertion order (spec §2.3), minus Content-Length."""
    headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("User-Agent", f"osquery/{version}"),
    ]
    if node_key and version_at_least(version, (5, 23, 0)):
        headers.append(("Authorization", f"NodeKey {node_key}"))
    if compressed:
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Host", host_header))
    if accept_gzip:
        headers.append(("Accept-Encoding", "gzip"))
    return headers


def version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    numbers = tuple(int(part) for part in version.split("-")[0].split(".") if part.isdigit())
    return numbers >= minimum


class HttpConnection:
    """One persistent connection to one server, like osquery's per-thread `http::Client`.

    Calls must not overlap: osquery's plugin threads each send one request at a time.
    """

    def __init__(
        self,
        address: ServerAddress,
        ssl_context: ssl.SSLContext,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        counters: HttpCounters | None = None,
    ) -> None:
        self.address = address
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self.counters = counters if counters is not None else HttpCounters()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> HttpResponse:
        """Send one request (following redirects) and return the final response.

        Raises TimeoutError after `timeout_s` in total, or the error of the resent try.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow_redirects(method, target, headers, body)
        except BaseException:
            self.counters.failures += 1
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # no wait: the peer may be gone; the transport aborts cleanly
        self._reader = self._writer = None

    async def _follow_redirects(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send_with_resend(method, target, headers, body)
            if response.status not in REDIRECT_CODES:
                return response
            self.counters.redirects += 1
            # osquery re-sends the same method and body, even for 303.
            target = self._redirect_target(response)
        raise HttpProtocolError("too many redirects")

    def _redirect_target(self, response: HttpResponse) -> str:
        location = response.headers.get("location")
        if not location:
            raise HttpProtocolError("Location header missing in redirect response")
        parts = urlsplit(location)
        if parts.netloc and (parts.hostname, parts.port or HTTPS_PORT) != (
            self.address.host,
            self.address.port,
        ):
            raise HttpProtocolError(f"redirect to another server is not emulated: {location}")
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def _send_with_resend(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        request = _encode_request(method, target, headers, body)
        try:
            return await self._exchange(request)
        except RESENDABLE_ERRORS:
            self.close()
            self.counters.resends += 1
            return await self._exchange(request)

    async def _exchange(self, request: bytes) -> HttpResponse:
        if self._reader is None or self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        self.counters.requests += 1
        self._writer.write(request)
        await self._writer.drain()
        response, keep_alive = await _read_response(self._reader)
        if not keep_alive:
            self.close()
        return response

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.address.host,
            self.address.port,
            ssl=self.ssl_context,
            server_hostname=self.address.host,  # SNI and the RFC 2818 name check
            limit=MAX_HEADER_BYTES,
        )
        self.counters.connections += 1


def _encode_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target or '/'} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[HttpResponse, bool]:
    """Read one response; return it and whether the connection may be reused."""
    status, http_version, headers = await _read_head(reader)
    while 100 <= status < 200:  # interim responses carry no body
        status, http_version, headers = await _read_head(reader)
    keep_alive = _keeps_alive(http_version, headers)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await _read_sized(reader, headers["content-length"])
    elif status in NO_BODY_CODES:
        body = b""
    else:
        body = await reader.read(MAX_BODY_BYTES + 1)  # framed by the server closing
        while len(body) <= MAX_BODY_BYTES and not reader.at_eof():
            body += await reader.read(MAX_BODY_BYTES + 1 - len(body))
        _check_body_size(len(body))
        keep_alive = False
    return HttpResponse(status, headers, body), keep_alive


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HttpProtocolError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpProtocolError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], headers


def _keeps_alive(http_version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if http_version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


async def _read_sized(reader: asyncio.StreamReader, content_length: str) -> bytes:
    if not content_length.isdigit():
        raise HttpProtocolError(f"bad Content-Length {content_length!r}")
    size = int(content_length)
    _check_body_size(size)
    return await reader.readexactly(size)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as error:
            raise HttpProtocolError(f"bad chunk size {size_line!r}") from error
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # skip trailers
                pass
            return bytes(body)
        _check_body_size(len(body) + size)
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # the CRLF closing each chunk


def _check_body_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise HttpProtocolError("body limit exceeded")
