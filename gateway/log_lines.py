"""The lines of a log batch: the JSON ingest stores, and one identity per line.

osquery deletes log lines from its buffer only when a POST is answered with success; when the
answer is lost (a timeout, a dropped connection, a process that died after storing), it sends
those lines again merged with the lines buffered since, in a body of its own
(osquery-protocol.md §7.3). A digest of the body cannot recognise that; a digest of each line
can. The gateway computes them here, once per line, and ingest keeps those of each node's
recent lines (docs/adr/0012-line-level-exactly-once.md).

A line's identity is xxh3-64 of its JSON as forwarded (orjson's compact form of what osquery
sent, the same bytes for the same buffered line however often it is re-sent). Two genuinely
separate identical lines (two identical status lines in one flush) have the same identity;
ingest tells them apart by their place (ingest_service/line_identities.py).
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any

import orjson
import xxhash

_xxh3 = xxhash.xxh3_64_intdigest


def encode_lines(records: list[Any]) -> tuple[bytes, bytes]:
    """(data_json, line_ids): the JSON array of the records, and their packed identities."""
    lines = [orjson.dumps(record) for record in records]
    return b"[" + b",".join(lines) + b"]", line_ids(lines)


def line_ids(lines: list[bytes]) -> bytes:
    """Packed little-endian uint64 identities, one per line, in order."""
    return array("Q", map(_xxh3, lines)).tobytes()


def batch_id(node_id: str, kind: int, campaign_id: str, content: bytes) -> str:
    """Same node, kind and content: same id, so a byte-identical re-send costs no parsing.

    `content` is the line identities where the batch has them (cheaper to digest than the
    JSON they identify), else the JSON itself.
    """
    digest = hashlib.sha256(f"{node_id}\0{kind}\0{campaign_id}\0".encode())
    digest.update(content)
    return digest.hexdigest()
