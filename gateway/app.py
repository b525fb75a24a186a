"""The gateway's application: its routes (the osquery endpoints and /healthz), and the
start-up and shutdown of the state they answer from."""

from __future__ import annotations

import orjson

from gateway import osquery_api
from gateway.gateway_state import GatewayState
from gateway.request_body import BadRequest, BodyLimits
from gateway.routing import Answer, GatewayApp, Request, Route
from quarry.runtime.settings import Settings


def create_app(settings: Settings | None = None) -> GatewayApp:
    settings = settings or Settings.from_env()

    async def startup() -> GatewayState:
        state = GatewayState.connect(settings)
        await state.start()
        return state

    async def shutdown(state: GatewayState) -> None:
        await state.stop()

    return GatewayApp({**osquery_api.routes(), "/healthz": Healthz()}, startup, shutdown)


class Healthz(Route):
    """Ready when the caches hold their first snapshots."""

    def body_limits(self, state: GatewayState) -> BodyLimits:
        return BodyLimits.from_settings(state.settings, state.settings.request_max_bytes_other)

    async def serve(self, request: Request) -> Answer:
        state: GatewayState = request.state
        synced = {
            "nodes": state.nodes.synced.is_set(),
            "config": state.config.synced.is_set(),
            "live_queries": state.live_queries.synced.is_set(),
        }
        ready = all(synced.values())
        return Answer(orjson.dumps({"ok": ready, "synced": synced}), 200 if ready else 503)

    def refuse(self, request: Request, refusal: BadRequest) -> Answer:
        return Answer(orjson.dumps({"error": str(refusal)}), refusal.status, refusal.close)
