"""Reading an osquery request: gzip bodies, lenient UTF-8, JSON objects, node keys."""

from __future__ import annotations

import gzip
import zlib

import orjson
from starlette.requests import Request

# osquery's own limits: logger batches are at most ~1024 lines of up to 1 MiB each.
MAX_BODY_BYTES = 64 * 1024 * 1024


class BadRequest(Exception):
    """The request cannot be understood; the message is shown to osquery and people."""


async def read_json_object(request: Request) -> dict:
    """The request body as a JSON object (gunzipped when Content-Encoding says gzip)."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes")
    if request.headers.get("content-encoding", "").lower() == "gzip":
        raw = _gunzip(raw)
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # osquery does not validate UTF-8 in table data (osquery-protocol.md §8.6).
        body = _loads_lenient(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _gunzip(raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadRequest(f"Content-Encoding is gzip but the body is not: {exc}") from exc


def _loads_lenient(raw: bytes) -> object:
    try:
        return orjson.loads(raw.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


def node_key_of(request: Request, body: dict) -> str:
    """The node key from the body, or from `Authorization: NodeKey` (osquery 5.23+)."""
    key = body.get("node_key")
    if isinstance(key, str) and key:
        return key
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "nodekey":
        return value.strip()
    return ""
