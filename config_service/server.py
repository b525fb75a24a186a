"""Process entry point of the config service: metrics, gRPC, the label loop, until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from config_service.fleet_directory import FleetDirectory
from config_service.label_evaluator import LabelEvaluator
from config_service.service import ConfigServicer
from config_service.store import ConfigStore
from protos.v1 import config_pb2_grpc
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
    start_metrics_endpoint(settings, "config")
    store = ConfigStore(settings.path("config.sqlite3"))
    directory = FleetDirectory(settings.service_addr("enroll"))
    servicer = ConfigServicer(store, directory)
    labels = LabelEvaluator(
        store,
        directory,
        settings.service_addr("distributed"),
        defined_labels=servicer.defined_labels,
        memberships_changed=servicer.publish_memberships,
    )
    server = await serve_grpc(
        f"{settings.bind_host}:{settings.config_port}",
        lambda s: config_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, s),
        "config",
    )
    label_loop = asyncio.create_task(labels.run())
    await until_signalled()
    log.info("shutting down")
    label_loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await label_loop
    servicer.close_watches()
    await server.stop(SHUTDOWN_GRACE_S)
    await labels.close()
    await directory.close()
    store.close()
