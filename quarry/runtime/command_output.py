"""How admin commands print: aligned tables for people, JSON for scripts (--json).

One convention for every command's JSON (docs/cli.md, "Output"): integers are JSON
numbers (never strings, whatever protobuf's own JSON mapping does with 64-bit ones),
every field is present (unset ones with their zero value), enums are their names, and
times are integers: unix seconds in fields named `*_at`, milliseconds in `*_ms`. Text
output shows times as UTC ISO 8601. emit_json and emit_json_line apply it to whatever a
command prints, protobuf messages included.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def emit_json(value: Any) -> None:
    """One JSON document on stdout, in the convention above."""
    json.dump(json_ready(value), sys.stdout, indent=2, sort_keys=True, default=str)
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
        ready = json_ready(fields)
        ordered = {"value": value, **{k: ready[k] for k in sorted(ready) if k != "value"}}
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


def emit_json_line(value: Any) -> None:
    """One JSON object on one line, flushed at once (a stream a pipe reads as it comes)."""
    sys.stdout.write(json.dumps(json_ready(value), sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def json_ready(value: Any) -> Any:
    """`value` in the JSON convention: messages as every field, times as integers."""
    if isinstance(value, Message):
        return proto_to_json(value)
    if isinstance(value, dict):
        return {key: _time_field(key, json_ready(item)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def _time_field(key: object, value: Any) -> Any:
    # Times kept as float seconds (carves) are whole seconds in JSON, like every other.
    if isinstance(key, str) and key.endswith(("_at", "_ms")) and isinstance(value, float):
        return int(value)
    return value


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


Leaf = Callable[[FieldDescriptor, Any], Any]
Key = Callable[[FieldDescriptor], str]


def proto_to_json(message: Message) -> dict[str, Any]:
    """Every field of a message, unset ones included, with 64-bit integers kept as numbers,
    maps as objects and enums as their names.

    (protobuf's MessageToDict writes int64 as strings and leaves out unset fields, which
    makes scripts test for both.)
    """
    return message_fields(message, _cli_leaf)


def message_fields(message: Message, leaf: Leaf, key: Key | None = None) -> dict[str, Any]:
    """The one walk over a message's fields (every field, maps as objects, repeated ones as
    lists, messages recursively), each scalar and enum converted by `leaf` and each field
    named by `key` (default its own name). The CLI's convention above and the REST API's
    (api_service/json_messages.py) differ only in those two."""
    return {
        (key(field) if key else field.name): _field_json(
            field, getattr(message, field.name), leaf, key
        )
        for field in message.DESCRIPTOR.fields
    }


def _field_json(field: FieldDescriptor, value: Any, leaf: Leaf, key: Key | None) -> Any:
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        return {k: _single_json(value_field, item, leaf, key) for k, item in value.items()}
    if field.is_repeated:
        return [_single_json(field, v, leaf, key) for v in value]
    return _single_json(field, value, leaf, key)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _single_json(field: FieldDescriptor, value: Any, leaf: Leaf, key: Key | None) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_fields(value, leaf, key)
    return leaf(field, value)


def _cli_leaf(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known else value
    return value


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
