"""Process entry point of the distributed service: metrics, gRPC server, expiry, until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from distributed_service.expiry import close_expired_forever
from distributed_service.node_directory import NodeDirectory
from distributed_service.service import DistributedServicer
from distributed_service.store import SERVICE_SCHEMA, CampaignStore
from protos.v1 import distributed_pb2_grpc
from quarry.grpc_runtime import serve_grpc
from quarry.metrics_endpoint import start_metrics_endpoint
from quarry.service_database import open_service_database
from quarry.settings import Settings
from quarry.shutdown import until_signalled

log = logging.getLogger(__name__)

# In-flight calls get this long to finish on shutdown.
SHUTDOWN_GRACE_S = 1.0


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    start_metrics_endpoint(settings, "distributed")
    database = open_service_database(settings, SERVICE_SCHEMA)
    store = CampaignStore(database)
    nodes = NodeDirectory(settings.service_addr("enroll"), settings.service_addr("config"))
    servicer = DistributedServicer(store, nodes, default_ttl_s=settings.live_query_ttl_s)
    servicer.changes.start_position()
    relay = asyncio.create_task(servicer.changes.relay_forever())
    server = await serve_grpc(
        f"{settings.bind_host}:{settings.distributed_port}",
        lambda s: distributed_pb2_grpc.add_DistributedServiceServicer_to_server(servicer, s),
        "distributed",
    )
    expiry = asyncio.create_task(
        close_expired_forever(servicer.close_expired, servicer.show_gauges)
    )
    await until_signalled()
    log.info("shutting down")
    servicer.close_watches()
    for task in (expiry, relay):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await server.stop(SHUTDOWN_GRACE_S)
    await nodes.close()
    database.close()
