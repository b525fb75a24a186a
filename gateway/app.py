"""The gateway's Starlette application: osquery routes, health, and start-up wiring."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import osquery_api
from gateway.gateway_state import GatewayState
from gateway.idle_connections import map_large_buffers_separately
from quarry.garbage_collection import tune_for_throughput
from quarry.process_logging import setup_logging
from quarry.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    if not logging.getLogger().handlers:  # a worker process uvicorn spawned
        setup_logging("gateway", settings.log_level)
        tune_for_throughput()
    map_large_buffers_separately()  # each worker process, before it accepts connections

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = GatewayState.connect(settings)
        app.state.gateway = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    routes = [*osquery_api.routes(), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=lifespan)


async def healthz(request: Request) -> JSONResponse:
    """Ready when the caches hold their first snapshots."""
    state: GatewayState = request.app.state.gateway
    synced = {
        "nodes": state.nodes.synced.is_set(),
        "config": state.config.synced.is_set(),
        "live_queries": state.live_queries.synced.is_set(),
    }
    return JSONResponse(
        {"ok": all(synced.values()), "synced": synced}, 200 if all(synced.values()) else 503
    )
