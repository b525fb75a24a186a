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

from quarry.runtime.command_output import message_fields


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
    return message_fields(message, _leaf, _key)


def _key(field: FieldDescriptor) -> str:
    if _holds_json(field):
        return field.name.removesuffix("_json")
    return "at" if field.name == "at_ms" else field.name


def _leaf(field: FieldDescriptor, value: Any) -> Any:
    if _holds_json(field):
        return json.loads(value) if value else None
    if field.name == "at_ms":
        return iso_time(value / 1000)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name.lower()
    if field.name.endswith("_at") and isinstance(value, int):
        return iso_time(value)
    return value


def _holds_json(field: FieldDescriptor) -> bool:
    return field.name.endswith("_json") and field.type == FieldDescriptor.TYPE_STRING
