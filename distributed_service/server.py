"""Process entry point of the distributed service: its parts and the expiry loop, run by
quarry/serving/service_process.py."""

from __future__ import annotations

import asyncio

from distributed_service.carves import CarveReader
from distributed_service.expiry import close_expired_forever
from distributed_service.node_directory import NodeDirectory
from distributed_service.service import DistributedServicer
from distributed_service.store import SERVICE_SCHEMA, CampaignStore
from protos.v1 import distributed_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.service_process import ServiceParts, run_service
from quarry.state.database import StateDatabase
from quarry.state.directory import carve_dir


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    await run_service(
        settings,
        SERVICE_SCHEMA,
        settings.distributed_port,
        lambda database: _parts(settings, database),
    )


def _parts(settings: Settings, database: StateDatabase) -> ServiceParts:
    nodes = NodeDirectory(settings.service_addr("enroll"), settings.service_addr("config"))
    servicer = DistributedServicer(
        CampaignStore(database),
        nodes,
        default_ttl_s=settings.live_query_ttl_s,
        carves=CarveReader(carve_dir(settings)),
    )
    return ServiceParts(
        register=lambda s: distributed_pb2_grpc.add_DistributedServiceServicer_to_server(
            servicer, s
        ),
        changes=servicer.changes,
        close_watches=servicer.close_watches,
        loops=[lambda: close_expired_forever(servicer.close_expired, servicer.show_gauges)],
        close=[nodes.close],
    )
