"""Reading an osquery request within limits: size, gzip, time, JSON shape, node keys.

Every limit is checked as early as it can be, so hostile input costs little:
- the declared Content-Length before any byte is read, then the bytes actually received
  while they arrive (chunked bodies declare nothing), by the HTTP server
  (gateway/http_connection.py) with the refusals defined here;
- the whole body must arrive within a deadline (a slow client holds nothing for long),
  also while it arrives;
- a gzip body is inflated piece by piece and refused as soon as it inflates past its
  limit, so a small bomb never fills memory;
- the number of JSON values is bounded before parsing, by counting commas and opening
  brackets (C-speed `bytes.count`; an upper bound, since commas inside strings count too);
- string lengths are checked after parsing, and only for bodies longer than the limit
  (a string cannot be longer than the body that holds it);
- nesting depth needs no walk of its own: orjson refuses documents deeper than 1024
  levels, and re-serializes (data, rows, host details) at most 254 deep; the gateway
  turns both into a refusal (docs/security.md).

Every refusal is a `BadRequest` with a bounded `reason` for the metric.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import orjson

from gateway.routing import Request
from quarry.runtime.settings import Settings

# Refusal reasons: the label values of quarry_gateway_refused_requests_total.
BODY_TOO_LARGE = "body_too_large"
DECOMPRESSED_TOO_LARGE = "decompressed_too_large"
BAD_GZIP = "bad_gzip"
UNSUPPORTED_ENCODING = "unsupported_encoding"
WRONG_CONTENT_TYPE = "wrong_content_type"
BODY_TIMEOUT = "body_timeout"
DISCONNECTED = "disconnected"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
TOO_DEEP = "too_deep"
TOO_MANY_VALUES = "too_many_values"
STRING_TOO_LONG = "string_too_long"
BAD_FIELD = "bad_field"
REFUSAL_REASONS = (
    BODY_TOO_LARGE,
    DECOMPRESSED_TOO_LARGE,
    BAD_GZIP,
    UNSUPPORTED_ENCODING,
    WRONG_CONTENT_TYPE,
    BODY_TIMEOUT,
    DISCONNECTED,
    INVALID_JSON,
    NOT_AN_OBJECT,
    TOO_DEEP,
    TOO_MANY_VALUES,
    STRING_TOO_LONG,
    BAD_FIELD,
)

GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer, nothing else
# orjson's fixed limits: the parser refuses deeper documents, dumps refuses deeper values.
ORJSON_MAX_PARSE_DEPTH = 1024
ORJSON_MAX_DUMP_DEPTH = 254


class BadRequest(Exception):
    """The request cannot be understood; the message is shown to osquery and people.

    `close` asks to end the connection after the answer: the rest of an oversized or
    stalled body is not worth reading.
    """

    def __init__(
        self, message: str, reason: str = BAD_FIELD, status: int = 400, close: bool = False
    ) -> None:
        super().__init__(message)
        self.reason, self.status, self.close = reason, status, close


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # as received: compressed when the body is gzip
    max_decompressed_bytes: int
    max_values: int
    max_string_chars: int
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings, max_bytes: int) -> BodyLimits:
        return cls(
            max_bytes=max_bytes,
            max_decompressed_bytes=settings.request_max_decompressed_bytes,
            max_values=settings.request_max_json_values,
            max_string_chars=settings.request_max_string_chars,
            timeout_s=settings.request_body_timeout_s,
        )


def read_json_object(request: Request, limits: BodyLimits) -> dict:
    """The request body as a JSON object (gunzipped when Content-Encoding says gzip)."""
    _check_content_type(request)
    raw = read_body(request, limits)
    if not raw.strip():
        return {}
    return parse_json_object(raw, limits)


def _check_content_type(request: Request) -> None:
    """osquery always sends application/json; no type at all is accepted too (curl, tests).

    Refusing other types keeps browsers' cross-site form posts out.
    """
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json":
        raise BadRequest(
            f"Content-Type must be application/json, not {declared[:100]!r}",
            WRONG_CONTENT_TYPE,
            415,
        )


def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The body, inflated when gzip; refused once it inflates too far or is not gzip after all.

    Its size as received and its deadline were enforced while it arrived
    (gateway/http_connection.py, with the refusals below).
    """
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise BadRequest(
            f"Content-Encoding {encoding[:100]!r} is not supported; send gzip or nothing",
            UNSUPPORTED_ENCODING,
            415,
        )
    if encoding != "gzip":
        return request.body
    inflater = GzipInflater(limits.max_decompressed_bytes)
    return inflater.feed(request.body) + inflater.finish()


# --- refusals while the body arrives (gateway/http_connection.py) ----------------------


def declared_too_large(declared_length: str | None, limits: BodyLimits) -> BadRequest | None:
    """The refusal of a Content-Length over the limit, before any byte of the body is read."""
    if declared_length is None:
        return None
    try:
        declared = int(declared_length)
    except ValueError:
        return None  # the HTTP parser refuses a bogus one before we get here
    return too_large(limits.max_bytes) if declared > limits.max_bytes else None


def too_large(max_bytes: int) -> BadRequest:
    return BadRequest(f"request body exceeds {max_bytes} bytes", BODY_TOO_LARGE, 413, True)


def too_slow(limits: BodyLimits) -> BadRequest:
    return BadRequest(
        f"request body not received within {limits.timeout_s:g} s", BODY_TIMEOUT, 408, True
    )


def disconnected() -> BadRequest:
    return BadRequest("client disconnected mid-body", DISCONNECTED, 400, True)


class GzipInflater:
    """Inflates a gzip body piece by piece, never producing more than max_bytes.

    zlib's max_length bounds each step's output; what it could not yet inflate stays in
    unconsumed_tail for the next step. Several members follow one another like in
    gzip.decompress, and zero padding after the last one is ignored like there.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._produced = 0
        self._fed = False
        self._member = zlib.decompressobj(GZIP_WBITS)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pending = data
        self._fed = self._fed or bool(data)
        while pending:
            if self._member.eof:
                pending = pending.lstrip(b"\x00")
                if not pending:
                    break
                self._member = zlib.decompressobj(GZIP_WBITS)
            out.append(self._inflate(pending))
            pending = self._member.unused_data if self._member.eof else self._member.unconsumed_tail
        return b"".join(out)

    def finish(self) -> bytes:
        """What zlib still holds; refused when the last member is cut short.

        An empty body is no member at all: osquery sends one when compression failed.
        """
        if not self._fed:
            return b""
        out: list[bytes] = []
        while not self._member.eof and (piece := self._inflate(b"")):
            out.append(piece)
        if not self._member.eof:
            raise BadRequest("Content-Encoding is gzip but the body is cut short", BAD_GZIP)
        return b"".join(out)

    def _inflate(self, data: bytes) -> bytes:
        # One byte more than the room left: getting it proves the limit is passed.
        room = self._max_bytes - self._produced + 1
        try:
            piece = self._member.decompress(data, room)
        except zlib.error as exc:
            raise BadRequest(
                f"Content-Encoding is gzip but the body is not: {exc}", BAD_GZIP
            ) from exc
        self._produced += len(piece)
        if self._produced > self._max_bytes:
            raise BadRequest(
                f"gzip body inflates past {self._max_bytes} bytes",
                DECOMPRESSED_TOO_LARGE,
                413,
                True,
            )
        return piece


def parse_json_object(raw: bytes, limits: BodyLimits) -> dict:
    """A JSON object within the value and string limits; BadRequest otherwise."""
    if len(raw) > limits.max_values and _most_values(raw) > limits.max_values:
        raise BadRequest(
            f"request body holds more than {limits.max_values} JSON values", TOO_MANY_VALUES, 413
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # osquery does not validate UTF-8 in table data (osquery-protocol.md §8.6).
        body = _loads_lenient(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", NOT_AN_OBJECT)
    if len(raw) > limits.max_string_chars:
        _check_string_lengths(body, limits.max_string_chars)
    return body


def _most_values(raw: bytes) -> int:
    """An upper bound of the values in a JSON text: each is followed by a comma, or opens
    a container, or is the last one."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def _loads_lenient(raw: bytes) -> object:
    try:
        return orjson.loads(raw.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise BadRequest(
                f"request body nests deeper than {ORJSON_MAX_PARSE_DEPTH} levels", TOO_DEEP
            ) from exc
        raise BadRequest(f"request body is not valid JSON: {exc}", INVALID_JSON) from exc


def _check_string_lengths(body: dict, max_chars: int) -> None:
    """Refuse any key or string value longer than max_chars (an iterative walk)."""
    stack: list[dict | list] = [body]
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            if any(len(key) > max_chars for key in container):
                raise _string_too_long(max_chars)
            children = container.values()
        else:
            children = container
        for child in children:
            if isinstance(child, str):
                if len(child) > max_chars:
                    raise _string_too_long(max_chars)
            elif isinstance(child, dict | list):
                stack.append(child)


def _string_too_long(max_chars: int) -> BadRequest:
    return BadRequest(
        f"a JSON string in the request body is longer than {max_chars} characters",
        STRING_TOO_LONG,
        413,
    )


def too_deep_to_forward() -> BadRequest:
    """For orjson.JSONEncodeError when a handler re-serializes part of the body."""
    return BadRequest(f"request body nests deeper than {ORJSON_MAX_DUMP_DEPTH} levels", TOO_DEEP)


def node_key_of(request: Request, body: dict) -> str:
    """The node key from the body, or from `Authorization: NodeKey` (osquery 5.23+)."""
    key = body.get("node_key")
    if isinstance(key, str) and key:
        return key
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "nodekey":
        return value.strip()
    return ""
