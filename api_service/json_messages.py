"""gRPC messages as the API's JSON: integers as numbers, times as ISO 8601 text.

The services speak Unix seconds (fields ending in `_at`, 0 meaning none) and Unix
milliseconds (`at_ms`); the API answers with ISO 8601 UTC text, or null for 0. Fields
holding JSON text (`*_json`) are answered as the JSON they hold, under the name without
the suffix. Enums are their lower-case names. Every field is present, even when empty, so
a client can rely on the shape the OpenAPI document gives.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def iso_time(unix_seconds: float) -> str | None:
    """ISO 8601 UTC text for a Unix time; None for 0 (never)."""
    if not unix_seconds:
        return None
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    if float(unix_seconds).is_integer():
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> float:
    """Unix seconds from ISO 8601 text (a `Z` or an offset; no offset means UTC)."""
    # An unescaped "+" of an offset arrives in a query string as a space.
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+", 1))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def message_json(message: Message) -> dict[str, Any]:
    """Every field of message, converted as the module docstring says."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        name, converted = _field(field, value)
        out[name] = converted
    return out


def _field(field: FieldDescriptor, value: Any) -> tuple[str, Any]:
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        return field.name, {k: _single(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return field.name, [_single(field, item) for item in value]
    if field.name.endswith("_json") and field.type == FieldDescriptor.TYPE_STRING:
        return field.name.removesuffix("_json"), json.loads(value) if value else None
    if field.name == "at_ms":
        return "at", iso_time(value / 1000)
    return field.name, _single(field, value)


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name.lower()
    if field.name.endswith("_at") and isinstance(value, int):
        return iso_time(value)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )
