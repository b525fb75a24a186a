"""Process entry point of the config service: metrics, gRPC, the label loop, until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from config_service.fleet_directory import FleetDirectory
from config_service.label_evaluator import LabelEvaluator
from config_service.service import ConfigServicer
from config_service.store import SERVICE_SCHEMA, ConfigStore
from protos.v1 import config_pb2_grpc
from quarry.grpc_runtime import serve_grpc
from quarry.metrics_endpoint import start_metrics_endpoint
from quarry.service_database import open_service_database
from quarry.settings import Settings
from quarry.shutdown import until_signalled

log = logging.getLogger(__name__)

# Replicas on PostgreSQL: the one holding this lock evaluates the labels.
LABEL_EVALUATION_LOCK_KEY = 0x717561727279_12
# In-flight calls get this long to finish on shutdown.
SHUTDOWN_GRACE_S = 1.0


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    start_metrics_endpoint(settings, "config")
    database = open_service_database(settings, SERVICE_SCHEMA)
    store = ConfigStore(database)
    directory = FleetDirectory(settings.service_addr("enroll"))
    servicer = ConfigServicer(store, directory)
    servicer.changes.start_position()
    relay = asyncio.create_task(servicer.changes.relay_forever())
    labels = LabelEvaluator(
        store,
        directory,
        settings.service_addr("distributed"),
        defined_labels=servicer.defined_labels,
        write_members=servicer.set_label_members,
        forget_labels_except=servicer.forget_labels_except,
        leads=lambda: database.holds_lead(LABEL_EVALUATION_LOCK_KEY),
    )
    server = await serve_grpc(
        f"{settings.bind_host}:{settings.config_port}",
        lambda s: config_pb2_grpc.add_ConfigServiceServicer_to_server(servicer, s),
        "config",
    )
    label_loop = asyncio.create_task(labels.run())
    await until_signalled()
    log.info("shutting down")
    for task in (label_loop, relay):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    servicer.close_watches()
    await server.stop(SHUTDOWN_GRACE_S)
    await labels.close()
    await directory.close()
    database.close()
