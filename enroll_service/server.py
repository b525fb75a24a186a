"""Process entry point of the enroll service: metrics, gRPC server, run until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from enroll_service.admin_tokens import (
    AdminTokenStore,
    LocalTokenAuthority,
    bootstrap_root_token,
)
from enroll_service.node_identity import check_identity_settings
from enroll_service.service import EnrollServicer
from enroll_service.store import SERVICE_SCHEMA, NodeStore
from protos.v1 import enroll_pb2_grpc
from quarry.grpc_runtime import serve_grpc
from quarry.metrics_endpoint import start_metrics_endpoint
from quarry.service_database import open_service_database
from quarry.settings import Settings
from quarry.shutdown import until_signalled
from quarry.state_directory import ensure_enroll_secret_file

log = logging.getLogger(__name__)

# In-flight calls get this long to finish on shutdown.
SHUTDOWN_GRACE_S = 1.0
# Secret expiry and the clone window move with the clock alone; their gauges follow.
GAUGE_REFRESH_S = 15.0


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    check_identity_settings(settings)
    start_metrics_endpoint(settings, "enroll")
    # `quarry up` creates it too; a service started alone must not refuse everyone.
    secret_path = ensure_enroll_secret_file(settings)
    if not settings.enroll_secret:
        log.info("enroll secret read from %s", secret_path)
    database = open_service_database(settings, SERVICE_SCHEMA)
    store = NodeStore(database)
    tokens = AdminTokenStore(database)
    bootstrap_root_token(settings, tokens)
    servicer = EnrollServicer(settings, store, tokens)
    servicer.changes.start_position()
    relay = asyncio.create_task(servicer.changes.relay_forever())
    server = await serve_grpc(
        f"{settings.bind_host}:{settings.enroll_port}",
        lambda s: enroll_pb2_grpc.add_EnrollServiceServicer_to_server(servicer, s),
        "enroll",
        token_authority=LocalTokenAuthority(tokens),
    )
    refresher = asyncio.create_task(_refresh_gauges(servicer))
    await until_signalled()
    log.info("shutting down")
    for task in (refresher, relay):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    servicer.close_watches()
    await servicer.close()
    await server.stop(SHUTDOWN_GRACE_S)
    database.close()


async def _refresh_gauges(servicer: EnrollServicer) -> None:
    while True:
        await asyncio.sleep(GAUGE_REFRESH_S)
        try:
            servicer.refresh_gauges()
        except Exception:
            log.exception("refreshing the enroll gauges failed; trying again later")
