"""JSON schemas of the API's answers, made from the gRPC messages they translate.

Each schema says exactly what api_service/json_messages.py makes of a message, so the
OpenAPI document (api_service/openapi.py) cannot drift from what the API answers; the
tests validate real answers against it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

Schema = dict[str, Any]

# Named schemas of the OpenAPI document's components, filled as messages are described.
COMPONENTS: dict[str, Schema] = {}

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
ANY_JSON: Schema = {}  # a config, host details: whatever JSON the service holds


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def message_schema(
    descriptor: Descriptor,
    name: str | None = None,
    drop: tuple[str, ...] = (),
    extra: dict[str, Schema] | None = None,
) -> Schema:
    """A reference to the schema of a message as json_messages.message_json answers it,
    registered under name (the message's own by default), less `drop`, plus `extra`."""
    name = name or descriptor.name
    if name not in COMPONENTS:
        COMPONENTS[name] = {}  # a placeholder first: messages may refer to each other
        properties = {}
        for field in descriptor.fields:
            if field.name in drop:
                continue
            key, schema = _field_schema(field)
            properties[key] = schema
        properties.update(extra or {})
        COMPONENTS[name] = {
            "type": "object",
            "properties": properties,
            "required": sorted(properties),
            "additionalProperties": False,
        }
    return ref(name)


def _field_schema(field: FieldDescriptor) -> tuple[str, Schema]:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value = _single_schema(field.message_type.fields_by_name["value"])
        return field.name, {"type": "object", "additionalProperties": value}
    if field.is_repeated:
        return field.name, {"type": "array", "items": _single_schema(field)}
    if field.name.endswith("_json") and field.type == FieldDescriptor.TYPE_STRING:
        return field.name.removesuffix("_json"), ANY_JSON
    if field.name == "at_ms":
        return "at", TIME
    return field.name, _single_schema(field)


def _single_schema(field: FieldDescriptor) -> Schema:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_schema(field.message_type)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name.lower() for v in field.enum_type.values]}
    if field.type in _SCALARS:
        return dict(_SCALARS[field.type])
    if field.name.endswith("_at"):
        return TIME
    return {"type": "integer"}


def page_of(items: Schema) -> Schema:
    """A page of a list answered by offset: its items, the total and the next offset."""
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": items},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]},
        },
        "required": ["items", "total", "limit", "offset", "next_offset"],
        "additionalProperties": False,
    }


ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}
