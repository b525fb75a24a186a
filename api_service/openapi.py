"""The OpenAPI 3.1 document of the API, made from the endpoint declarations
(api_service/routing.py), served at /api/v1/openapi.json."""

from __future__ import annotations

import re
from typing import Any

from api_service.routing import Endpoint
from api_service.schemas import COMPONENTS, ERROR, Schema

ERROR_STATUSES = {
    "400": "bad parameters, body or JSON (the message says which)",
    "401": "no valid token (Authorization: Bearer <token>)",
    "403": "the token's role may not do this",
    "404": "no such resource",
    "503": "a service behind the API is unreachable",
}


def openapi_document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Quarry REST API",
            "version": version,
            "description": "JSON over HTTPS, each call made as the caller's token to Quarry's "
            "services, which decide and audit it (docs/api.md).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {**COMPONENTS, "Error": ERROR},
        },
    }


def response_content(endpoint: Endpoint) -> dict[str, Any]:
    """The success answer's media types, each with its schema (several: alternatives)."""
    media = endpoint.media or ("text/event-stream" if endpoint.event_stream else "application/json")
    return {
        media: {"schema": schema}
        for media, schema in ((media, endpoint.response), *endpoint.alternatives)
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(endpoint.status): {
            "description": endpoint.summary,
            "content": response_content(endpoint),
        }
    }
    for status, why in ERROR_STATUSES.items():
        responses[status] = {
            "description": why,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "description": "Needs no token."
        if endpoint.role == "none"
        else f"Needs a token of role {endpoint.role} or higher.",
        "tags": list(endpoint.tags),
        "x-quarry-role": endpoint.role,
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": p.schema(),
            }
            for p in endpoint.all_params
        ],
        "responses": responses,
    }
    if endpoint.role == "none":
        operation["security"] = []
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": "required" in endpoint.body,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    return operation


def path_parameters(path: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", path))


def document_schema(document: dict[str, Any], schema: Schema) -> Schema:
    """schema, resolvable on its own: its references point into document's components."""
    return {**schema, "components": document["components"]}
