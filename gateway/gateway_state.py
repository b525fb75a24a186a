"""What one gateway worker holds: its caches, its batchers and its service clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc

from gateway import metrics
from gateway.activity_batcher import ActivityBatcher
from gateway.config_cache import ConfigCache
from gateway.enroll_batcher import EnrollBatcher
from gateway.host_queries import HostQuerySchedule
from gateway.live_queries import LiveQueries
from gateway.log_forwarder import LogForwarder
from gateway.node_cache import NodeCache
from gateway.request_body import BodyLimits
from osquery_config.host_queries import builtin_groups
from protos.v1 import config_pb2_grpc, distributed_pb2_grpc, enroll_pb2_grpc
from quarry.encryption.zmq_curve import client_keys
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import aio_channel

log = logging.getLogger(__name__)

# How long a starting gateway waits for its caches before serving anyway.
SYNC_WAIT_S = 15.0


@dataclass
class GatewayState:
    settings: Settings
    enroll_stub: enroll_pb2_grpc.EnrollServiceStub
    enrollments: EnrollBatcher
    nodes: NodeCache
    config: ConfigCache
    live_queries: LiveQueries
    activity: ActivityBatcher
    logs: LogForwarder
    host_queries: HostQuerySchedule
    channels: list[grpc.aio.Channel]
    tasks: list[asyncio.Task] = field(default_factory=list)
    # Each endpoint's request limits, made from settings on its first request.
    body_limits: dict[str, BodyLimits] = field(default_factory=dict)

    @classmethod
    def connect(cls, settings: Settings) -> GatewayState:
        enroll_ch = aio_channel(settings.service_addr("enroll"))
        config_ch = aio_channel(settings.service_addr("config"))
        distributed_ch = aio_channel(settings.service_addr("distributed"))
        enroll_stub = enroll_pb2_grpc.EnrollServiceStub(enroll_ch)
        distributed_stub = distributed_pb2_grpc.DistributedServiceStub(distributed_ch)
        config = ConfigCache(
            config_pb2_grpc.ConfigServiceStub(config_ch), settings.checkin_flush_interval_s
        )
        return cls(
            settings=settings,
            enroll_stub=enroll_stub,
            enrollments=EnrollBatcher(enroll_stub),
            nodes=NodeCache(enroll_stub),
            config=config,
            live_queries=LiveQueries(distributed_stub, config.tags_of),
            activity=ActivityBatcher(
                enroll_stub, distributed_stub, settings.checkin_flush_interval_s
            ),
            logs=LogForwarder(
                settings.zmq_endpoints(),
                settings.log_ack_timeout_s,
                client_keys(settings) if settings.zmq_curve else None,
            ),
            host_queries=HostQuerySchedule(
                builtin_groups(settings.host_vitals_interval_s, settings.host_software_interval_s)
            ),
            channels=[enroll_ch, config_ch, distributed_ch],
        )

    async def start(self) -> None:
        """Start the watch streams and batchers; wait (bounded) for the first snapshots."""
        self.logs.connect()
        for runner in (self.nodes, self.config, self.live_queries, self.activity, self.logs):
            self.tasks.append(asyncio.create_task(runner.run()))
        self.tasks.append(asyncio.create_task(metrics.sample_requests_in_flight()))
        synced = [
            self.nodes.synced.wait(),
            self.config.synced.wait(),
            self.live_queries.synced.wait(),
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*synced), SYNC_WAIT_S)
        except TimeoutError:
            log.warning("serving before every watch stream synced; they keep retrying")

    async def stop(self) -> None:
        await self.enrollments.close()
        with contextlib.suppress(Exception):
            await self.activity.flush()
        with contextlib.suppress(Exception):
            await self.config.fetches.flush()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()
        self.logs.close()
