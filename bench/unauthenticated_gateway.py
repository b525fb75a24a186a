"""The real gateway with authentication skipped: the benchmark's yardstick for its cost.

Every osquery request is authenticated (gateway/osquery_api.authenticate, answered from
the node keys held in memory). To show what that costs, the benchmark runs this second
gateway beside the cluster's: the same app (gateway.app.create_app), settings, certificate,
worker count and services, except that `authenticate` returns one fixed node without
reading the key. It exists only here; the production gateway has no way to skip it.

    BENCH_FIXED_NODE='{"node_id": ..., "host_identifier": ...}' QUARRY_...=... \
        python -m bench.unauthenticated_gateway

Worker processes import the app factory by name (gateway/serving.py), so the patch is made
by this module's factory, in each process that builds an app.
"""

from __future__ import annotations

import dataclasses
import json
import os

from gateway import app as gateway_app
from gateway import osquery_api
from gateway import server as gateway_server
from gateway.gateway_state import GatewayState
from gateway.node_cache import NodeIdentity
from gateway.routing import GatewayApp, Request
from quarry.runtime.process_logging import setup_logging
from quarry.runtime.settings import Settings

FIXED_NODE_ENV = "BENCH_FIXED_NODE"  # JSON of NodeIdentity's fields
UNAUTHENTICATED_APP = "bench.unauthenticated_gateway:create_app"


def fixed_node() -> NodeIdentity:
    """The node every request is served as, from the environment (fields it names)."""
    given = json.loads(os.environ.get(FIXED_NODE_ENV) or "{}")
    if not given.get("node_id"):
        raise SystemExit(f"{FIXED_NODE_ENV} must hold a JSON object with a node_id")
    known = {field.name for field in dataclasses.fields(NodeIdentity)}
    values = {name: value for name, value in given.items() if name in known}
    values["tags"] = tuple(values.get("tags", ()))
    return NodeIdentity(**values)


def skip_authentication(node: NodeIdentity):
    """A stand-in for osquery_api.authenticate that never reads the node key."""

    async def authenticate(request: Request, state: GatewayState, body: dict) -> NodeIdentity:
        # Still recorded as a check-in, as the real one does: only the key check is skipped.
        state.activity.seen(node.node_id)
        return node

    return authenticate


def create_app(settings: Settings | None = None) -> GatewayApp:
    """The app factory, run in every gateway process: patch, then build the gateway's own."""
    osquery_api.authenticate = skip_authentication(fixed_node())
    return gateway_app.create_app(settings)


def main() -> None:
    settings = Settings.from_env()
    setup_logging("gateway-unauthenticated", settings.log_level)
    fixed_node()  # a missing node fails here, not in every worker
    # gateway/server.py's main, so TLS, workers and metrics stay its own.
    gateway_server.main(settings, UNAUTHENTICATED_APP)


if __name__ == "__main__":
    main()
