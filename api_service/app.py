"""The API's ASGI application: every endpoint, the OpenAPI document, errors as JSON, and
the web console's pages beside them.

The API lives under /api/v1; the console (api_service/console/, docs/console.md) has every
other path.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api_service import access, carves, config, detections, health, hosts, queries
from api_service.backends import Backends
from api_service.console import pages as console_pages
from api_service.console.web import Console
from api_service.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    unexpected_error_handler,
)
from api_service.metrics import RequestMetrics
from api_service.openapi import openapi_document
from api_service.routing import Endpoint
from quarry.runtime.loop_watch import start_loop_watch
from quarry.runtime.metrics_endpoint import mark_ready
from quarry.runtime.settings import Settings

API_VERSION = "1"
OPENAPI_PATH = "/api/v1/openapi.json"
ENDPOINTS: list[Endpoint] = [
    *hosts.ENDPOINTS,
    *queries.ENDPOINTS,
    *config.ENDPOINTS,
    *access.ENDPOINTS,
    *carves.ENDPOINTS,
    *detections.ENDPOINTS,
    *health.ENDPOINTS,
]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    held: dict[str, Backends] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Channels belong to the event loop that serves requests: made here, not before.
        held["backends"] = Backends.connect(settings)
        mark_ready()  # the metrics port's /readyz: this process answers requests now
        start_loop_watch()  # /livez and the loop lag (quarry/runtime/loop_watch.py)
        try:
            yield
        finally:
            await held["backends"].close()

    document = openapi_document(ENDPOINTS, API_VERSION)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    routes = [
        Route(OPENAPI_PATH, openapi, methods=["GET"], name="openapi"),
        *(endpoint.route(lambda: held["backends"]) for endpoint in ENDPOINTS),
        *console_pages.routes(Console(lambda: held["backends"])),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestMetrics)],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
