"""Endpoints declared once: the route Starlette serves, its parameters and its schemas.

Each endpoint lists its query and path parameters, its body's schema and its answer's
schema; the same declaration checks every request before the handler runs (unknown or
malformed parameters, over-limit pages, bad JSON bodies are refused with one clear line)
and becomes its operation in the OpenAPI document (api_service/openapi.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api_service.backends import Backends
from api_service.errors import ApiError, bad_request
from api_service.json_messages import parse_time
from api_service.schemas import Schema
from quarry.access.admin_auth import bearer_token

# Every list is paged; a page holds at most MAX_LIMIT items (docs/api.md, "Paging").
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY_BYTES = 4 << 20  # a config state is the largest body
MAX_PARAM_CHARS = 1000


@dataclass(frozen=True)
class Param:
    """A query or path parameter. kind: string, integer, boolean, time (ISO 8601)."""

    name: str
    description: str
    kind: str = "string"
    where: str = "query"
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None

    def schema(self) -> Schema:
        schema: Schema = {"type": "string" if self.kind == "time" else self.kind}
        if self.kind == "time":
            schema["format"] = "date-time"
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def parse(self, raw: str) -> Any:
        if len(raw) > MAX_PARAM_CHARS:
            raise bad_request(f"parameter {self.name} is longer than {MAX_PARAM_CHARS} characters")
        if self.kind == "integer":
            return self._integer(raw)
        if self.kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise bad_request(f"parameter {self.name} must be true or false, not {raw!r}")
            return raw.lower() in ("true", "1")
        if self.kind == "time":
            try:
                return parse_time(raw)
            except ValueError:
                raise bad_request(
                    f"parameter {self.name} must be an ISO 8601 time "
                    f"(2026-12-31T00:00:00Z), not {raw!r}"
                ) from None
        if self.enum and raw not in self.enum:
            raise bad_request(
                f"parameter {self.name} must be one of {', '.join(self.enum)}, not {raw!r}"
            )
        return raw

    def _integer(self, raw: str) -> int:
        if not re.fullmatch(r"-?\d{1,18}", raw):
            raise bad_request(f"parameter {self.name} must be a whole number, not {raw!r}")
        value = int(raw)
        if self.minimum is not None and value < self.minimum:
            raise bad_request(f"parameter {self.name} must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            code = "limit_too_large" if self.name == "limit" else "bad_request"
            raise bad_request(f"parameter {self.name} must be at most {self.maximum}", code)
        return value


LIMIT = Param(
    "limit",
    f"items per page (at most {MAX_LIMIT})",
    "integer",
    minimum=1,
    maximum=MAX_LIMIT,
    default=DEFAULT_LIMIT,
)
OFFSET = Param(
    "offset", "items to skip: the next_offset of the previous page", "integer", minimum=0, default=0
)


@dataclass
class Call:
    """One request as a handler sees it: checked parameters, the JSON body, the caller."""

    request: Request
    token: str
    params: dict[str, Any]
    body: dict[str, Any]
    backends: Backends


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    # The least role the services require (documentation: they decide, not the API).
    role: str
    response: Schema
    params: tuple[Param, ...] = ()
    body: Schema | None = None
    paged: bool = False
    status: int = 200
    event_stream: bool = False
    # What the answer is when not JSON (a carve's archive: application/octet-stream).
    media: str = ""
    # Several media types, each with its schema, when a parameter picks one (the export's
    # ?format=csv|json): the document lists each, so a client knows what it will get.
    alternatives: tuple[tuple[str, Schema], ...] = ()
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def all_params(self) -> tuple[Param, ...]:
        return (*self.params, LIMIT, OFFSET) if self.paged else self.params

    def route(self, backends: Callable[[], Backends]) -> Route:
        async def endpoint(request: Request) -> Response:
            call = Call(
                request,
                caller_token(request),
                self._checked_params(request),
                await self._checked_body(request),
                backends(),
            )
            answer = await self.handler(call)
            if isinstance(answer, Response):
                return answer
            return JSONResponse(answer, status_code=self.status)

        return Route(self.path, endpoint, methods=[self.method], name=self.operation_id)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def _checked_params(self, request: Request) -> dict[str, Any]:
        declared = {p.name: p for p in self.all_params if p.where == "query"}
        unknown = sorted(set(request.query_params) - set(declared))
        if unknown:
            allowed = ", ".join(sorted(declared)) or "none"
            raise bad_request(f"unknown parameter {unknown[0]} (this resource takes: {allowed})")
        values: dict[str, Any] = {}
        for param in self.all_params:
            if param.where == "path":
                values[param.name] = param.parse(request.path_params[param.name])
                continue
            raw = request.query_params.getlist(param.name)
            if len(raw) > 1:
                raise bad_request(f"parameter {param.name} is given {len(raw)} times; give it once")
            values[param.name] = param.parse(raw[0]) if raw else param.default
        return values

    async def _checked_body(self, request: Request) -> dict[str, Any]:
        if self.body is None:
            return {}
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        if not raw.strip():
            body: Any = {}
        else:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise bad_request(f"the body is not valid JSON: {exc}", "invalid_json") from None
        check_body(body, self.body)
        return body


def caller_token(request: Request) -> str:
    """The token of `Authorization: Bearer <token>`; empty when absent (the services then
    refuse the call as unauthenticated, and audit it)."""
    return bearer_token(request.headers.items())


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def check_body(body: Any, schema: Schema, where: str = "the body") -> None:
    """The body against its (simple) schema: types, required and unknown keys, enums."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is_type(body, k) for k in kinds):
            raise bad_request(f"{where} must be {' or '.join(kinds)}, not {_json_type(body)}")
    if "enum" in schema and body not in schema["enum"]:
        raise bad_request(f"{where} must be one of {', '.join(map(str, schema['enum']))}")
    if isinstance(body, dict) and "properties" in schema:
        properties = schema["properties"]
        for key in schema.get("required", ()):
            if key not in body:
                raise bad_request(f"{where} needs the field {key!r}")
        for key, value in body.items():
            if key not in properties:
                if schema.get("additionalProperties", True) is False:
                    raise bad_request(
                        f"{where} has an unknown field {key!r} (known: {', '.join(properties)})"
                    )
                continue
            check_body(value, properties[key], f"field {key!r}")
    if isinstance(body, list) and "items" in schema:
        for item in body:
            check_body(item, schema["items"], f"each item of {where}")
    if _is_type(body, "number"):
        if "minimum" in schema and body < schema["minimum"]:
            raise bad_request(f"{where} must be at least {schema['minimum']}")
        if "maximum" in schema and body > schema["maximum"]:
            raise bad_request(f"{where} must be at most {schema['maximum']}")


def _is_type(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _JSON_TYPES.get(kind, (object,)))


def _json_type(value: Any) -> str:
    for kind in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, kind):
            return kind
    return type(value).__name__


def page(items: list[Any], call: Call) -> dict[str, Any]:
    """The page of items the call's limit and offset ask for, with the total."""
    limit, offset = call.params["limit"], call.params["offset"]
    chosen = items[offset : offset + limit]
    more = offset + limit < len(items)
    return {
        "items": chosen,
        "total": len(items),
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if more else None,
    }
