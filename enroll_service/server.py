"""Process entry point of the enroll service: metrics, gRPC server, run until signalled."""

from __future__ import annotations

import asyncio
import logging

from enroll_service.service import EnrollServicer
from enroll_service.shared_secret import ensure_secret_file
from enroll_service.store import NodeStore
from protos.v1 import enroll_pb2_grpc
from quarry.grpc_runtime import serve_grpc
from quarry.metrics_endpoint import start_metrics_endpoint
from quarry.settings import Settings
from quarry.shutdown import until_signalled

log = logging.getLogger(__name__)

# In-flight calls get this long to finish on shutdown.
SHUTDOWN_GRACE_S = 1.0


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    start_metrics_endpoint(settings, "enroll")
    # `quarry up` creates it too; a service started alone must not refuse everyone.
    secret_path = ensure_secret_file(settings)
    if not settings.enroll_secret:
        log.info("enroll secret read from %s", secret_path)
    store = NodeStore(settings.path("enroll.sqlite3"))
    servicer = EnrollServicer(settings, store)
    server = await serve_grpc(
        f"{settings.bind_host}:{settings.enroll_port}",
        lambda s: enroll_pb2_grpc.add_EnrollServiceServicer_to_server(servicer, s),
        "enroll",
    )
    await until_signalled()
    log.info("shutting down")
    servicer.close_watches()
    await server.stop(SHUTDOWN_GRACE_S)
    store.close()
