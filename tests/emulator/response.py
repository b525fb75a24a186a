"""How osquery decides whether a server's answer succeeded: from the body alone.

osquery ignores the HTTP status (only redirects matter). An empty body counts as `{}`;
anything that is not strict JSON fails; a top-level `node_invalid: true` clears the node
key; any top-level `error` member fails the call (spec §2.5, §3.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

INVALID_NODE_KEY = "Request failed: Invalid node key"


@dataclass(frozen=True)
class Verdict:
    """What the request helper concluded from one response body."""

    ok: bool
    document: dict[str, Any] | None  # the parsed object, when the body parsed as one
    node_invalid: bool = False
    message: str = ""  # osquery's failure text; "" on success


def parse_body(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """Parse a body the way osquery's JSON serializer does: (object, "") or (None, reason)."""
    if not body:
        return {}, ""  # osquery treats an empty body as {} (a Sumo Logic quirk)
    # rapidjson stops at a NUL byte, as if the body ended there.
    text = body.split(b"\0", 1)[0]
    if not text.strip():
        return None, "Cannot parse JSON: The document is empty."
    try:
        # orjson is strict like rapidjson: no NaN, no comments, no trailing garbage.
        document = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return None, f"Cannot parse JSON: {error}"
    if not isinstance(document, dict):
        # Undefined behaviour in a release osqueryd; a failure is the only safe reading.
        return None, f"Cannot parse JSON: top-level value is a {type(document).__name__}"
    return document, ""


def judge_response(body: bytes) -> Verdict:
    """Apply TLSRequestHelper::go's rules to a response body (config, logger, distributed)."""
    document, reason = parse_body(body)
    if document is None:
        return Verdict(ok=False, document=None, message=reason)
    if document.get("node_invalid") is True:  # a non-bool such as "true" reads as false
        message = INVALID_NODE_KEY
        if "error" in document:
            message += f": {_error_text(document['error'])}"
        return Verdict(ok=False, document=document, node_invalid=True, message=message)
    if "error" in document:
        return Verdict(
            ok=False, document=document, message=f"Request failed: {_error_text(document['error'])}"
        )
    return Verdict(ok=True, document=document)


def _error_text(value: Any) -> str:
    return value if isinstance(value, str) else "<unknown>"
