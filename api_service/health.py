"""The API's health route: whether it can reach each service behind it.

GET /api/v1/health needs no token: it asks each service's gRPC health check
(grpc.health.v1, which every Quarry server answers and no admin gate guards) and answers
200 when all four serve, 503 with the ones that do not otherwise. The process's own
liveness is /livez on its metrics port (quarry/runtime/loop_watch.py), which a
failing service never turns red: a restart of the API would not mend a service.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.responses import JSONResponse

from api_service.backends import SERVICE_NAMES
from api_service.errors import ApiError, error_response
from api_service.routing import Call, Endpoint
from api_service.schemas import Schema

HEALTH_TIMEOUT_S = 3.0

HEALTH: Schema = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "services": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in SERVICE_NAMES},
            "required": list(SERVICE_NAMES),
            "additionalProperties": False,
        },
    },
    "required": ["status", "services"],
    "additionalProperties": False,
}


async def _status(channel: grpc.aio.Channel) -> str:
    """serving, not_serving, ... (the health check's own words), or why it failed."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code().name.lower()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status).lower()


async def api_health(call_: Call) -> dict | JSONResponse:
    channels = call_.backends.channels
    found = await asyncio.gather(*(_status(channels[name]) for name in SERVICE_NAMES))
    services = dict(zip(SERVICE_NAMES, found, strict=True))
    failing = {name: state for name, state in services.items() if state != "serving"}
    if failing:
        said = ", ".join(f"{name} service {state}" for name, state in failing.items())
        return error_response(ApiError(503, "unavailable", f"not every service serves: {said}"))
    return {"status": "ok", "services": services}


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/health",
        api_health,
        "whether every service behind the API serves (no token needed)",
        "none",
        HEALTH,
        tags=("health",),
    ),
]
