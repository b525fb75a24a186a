"""One start-up and shutdown for the state services (enroll, config, distributed).

Each of them runs the same process: its /metrics endpoint, its database (opened and
migrated), the relay of its change outbox (quarry/state/change_log.py), its gRPC server (health,
metrics and admin interceptors: quarry/serving/grpc_runtime.py), its own background loops, then,
once signalled, an orderly stop. A service says only what it runs, as a ServiceParts
built from its open database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from quarry.access.admin_auth import TokenAuthority
from quarry.runtime.metrics_endpoint import start_metrics_endpoint
from quarry.runtime.settings import Settings
from quarry.runtime.shutdown import until_signalled
from quarry.serving.grpc_runtime import serve_grpc
from quarry.state.change_log import ChangeLog
from quarry.state.database import StateDatabase
from quarry.state.service_database import ServiceSchema, open_service_database

log = logging.getLogger(__name__)

# In-flight calls get this long to finish on shutdown.
SHUTDOWN_GRACE_S = 1.0


@dataclass(frozen=True)
class ServiceParts:
    """What one service runs besides the plumbing every service shares."""

    # Adds the service's servicer to the gRPC server.
    register: Callable[[grpc.aio.Server], None]
    # The service's change feeds: relayed from the outbox while the process runs.
    changes: ChangeLog
    # Ends the watch streams cleanly, before the server stops.
    close_watches: Callable[[], None]
    # Loops run from the moment the server listens until shutdown (then cancelled).
    loops: Sequence[Callable[[], Awaitable[None]]] = ()
    # Awaited after the watches close and before the server stops (work in progress).
    finish: Sequence[Callable[[], Awaitable[None]]] = ()
    # Awaited once the server stopped (channels to other services).
    close: Sequence[Callable[[], Awaitable[None]]] = ()
    # Checks admin tokens; by default the enroll service's, asked over gRPC.
    token_authority: TokenAuthority | None = None


async def run_service(
    settings: Settings,
    schema: ServiceSchema,
    port: int,
    build: Callable[[StateDatabase], ServiceParts],
) -> None:
    """Run the service whose state `schema` describes on port until signalled, then stop it."""
    name = schema.service
    start_metrics_endpoint(settings, name)
    database = open_service_database(settings, schema)
    parts = build(database)
    parts.changes.start_position()
    tasks = [asyncio.create_task(parts.changes.relay_forever())]
    server = await serve_grpc(
        f"{settings.bind_host}:{port}",
        parts.register,
        name,
        token_authority=parts.token_authority,
    )
    tasks += [asyncio.create_task(loop()) for loop in parts.loops]
    await until_signalled()
    log.info("shutting down")
    for task in reversed(tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    parts.close_watches()
    for finish in parts.finish:
        await finish()
    await server.stop(SHUTDOWN_GRACE_S)
    for close in parts.close:
        await close()
    database.close()
