"""The gateway's ASGI application: osquery routes, health, and start-up wiring."""

from __future__ import annotations

import logging

import orjson

from gateway import osquery_api
from gateway.asgi import Answer, GatewayApp, Request
from gateway.gateway_state import GatewayState
from gateway.idle_connections import map_large_buffers_separately
from quarry.runtime.garbage_collection import tune_for_throughput
from quarry.runtime.process_logging import setup_logging
from quarry.runtime.settings import Settings


def create_app(settings: Settings | None = None) -> GatewayApp:
    settings = settings or Settings.from_env()
    if not logging.getLogger().handlers:  # a worker process uvicorn spawned
        setup_logging("gateway", settings.log_level)
        tune_for_throughput()
    map_large_buffers_separately()  # each worker process, before it accepts connections

    async def startup() -> GatewayState:
        state = GatewayState.connect(settings)
        await state.start()
        return state

    async def shutdown(state: GatewayState) -> None:
        await state.stop()

    return GatewayApp({**osquery_api.routes(), "/healthz": healthz}, startup, shutdown)


async def healthz(request: Request) -> Answer:
    """Ready when the caches hold their first snapshots."""
    state: GatewayState = request.state
    synced = {
        "nodes": state.nodes.synced.is_set(),
        "config": state.config.synced.is_set(),
        "live_queries": state.live_queries.synced.is_set(),
    }
    ready = all(synced.values())
    return Answer(orjson.dumps({"ok": ready, "synced": synced}), 200 if ready else 503)
