"""How admin commands print: aligned tables for people, JSON for scripts (--json).

Times shown to people are UTC ISO-8601; JSON keeps unix seconds, as the services do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def emit_once(value: str, fields: dict[str, Any] | None = None) -> None:
    """A value shown only this once (an enroll secret, a token), written and flushed before
    the command does anything else that could fail.

    Alone on its line, or with `fields` as one JSON object whose first key is "value", so
    even `| head -3` keeps it. When the output is already closed the value is lost: say so
    on stderr, then let the BrokenPipeError end the command (quarry/cli/main.py).
    """
    if fields is None:
        text = value + "\n"
    else:
        ordered = {"value": value, **{k: fields[k] for k in sorted(fields) if k != "value"}}
        text = json.dumps(ordered, indent=2, default=str) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        print(
            "quarry: the output closed before the value, shown only once, was written:"
            " it is lost; make a new one",
            file=sys.stderr,
        )
        raise


def emit_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=False)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def utc_iso(unix_time: int, zero: str = "never") -> str:
    """2026-12-31T00:00:00Z for a unix time; `zero` for 0, which the protos use for unset."""
    if not unix_time:
        return zero
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def proto_to_json(message: Message) -> dict[str, Any]:
    """Every field of a message, unset ones included, with 64-bit integers kept as numbers.

    (protobuf's MessageToDict writes int64 as strings and leaves out unset fields, which
    makes scripts test for both.)
    """
    return {
        field.name: _field_json(field, getattr(message, field.name))
        for field in message.DESCRIPTOR.fields
    }


def _field_json(field: FieldDescriptor, value: Any) -> Any:
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    if field.is_repeated:
        return [proto_to_json(v) if is_message else v for v in value]
    return proto_to_json(value) if is_message else value


def progress(message: str) -> None:
    """A progress line on stderr, rewritten in place on a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + message)
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _cell(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
