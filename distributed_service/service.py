"""The DistributedService gRPC servicer: translates messages and calls the rules.

Starting a campaign is in launch.py, what follows (cancel, expiry, activity, gauges) in
campaigns.py, the feeds the gateways and analysts watch in campaign_feed.py, reading the
carves the gateways stored in carves.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from distributed_service.campaign_feed import CampaignFeed
from distributed_service.campaigns import Campaigns
from distributed_service.carves import CarveReader, carve_message
from distributed_service.launch import Launcher
from distributed_service.messages import (
    answer_record,
    campaign_message,
    delivery_record,
    host_message,
)
from distributed_service.node_directory import NodeDirectory
from distributed_service.store import STATUS_FILTERS, CampaignQuery, CampaignStore
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.access.admin_auth import Refused
from quarry.state.change_log import ChangeLog


class DistributedServicer(distributed_pb2_grpc.DistributedServiceServicer):
    def __init__(
        self,
        store: CampaignStore,
        nodes: NodeDirectory,
        default_ttl_s: int,
        carves: CarveReader,
    ) -> None:
        self._store = store
        self._carves = carves
        self._feed = CampaignFeed(store)
        self._campaigns = Campaigns(store, self.changes)
        self._launcher = Launcher(
            store, nodes, self.changes, default_ttl_s, started=self.show_gauges
        )
        self.show_gauges()

    @property
    def changes(self) -> ChangeLog:
        """Both feeds reach the watch streams of every replica through this (ADR 0009)."""
        return self._feed.changes

    def close_watches(self) -> None:
        self._feed.close()

    def close_expired(self) -> int:
        return self._campaigns.close_expired()

    def show_gauges(self) -> None:
        self._campaigns.show_gauges()

    async def StartQuery(
        self, request: distributed_pb2.StartQueryRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.Campaign:
        return await self._launcher.start(request)

    async def GetCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.CampaignReport:
        campaign = self._store.campaign(request.campaign_id)
        if campaign is None:
            return distributed_pb2.CampaignReport(found=False)
        hosts = [] if request.counts_only else self._store.hosts(campaign.campaign_id)
        return distributed_pb2.CampaignReport(
            campaign=campaign_message(campaign),
            hosts=[host_message(h) for h in hosts],
            found=True,
            counts=self._store.counts(campaign.campaign_id),
        )

    async def ListCampaigns(
        self, request: distributed_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.ListCampaignsResponse:
        if request.status and request.status not in STATUS_FILTERS:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"status must be one of {', '.join(STATUS_FILTERS)}; got {request.status!r}",
            )
        if request.limit < 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "limit must be >= 0")
        query = CampaignQuery(
            include_closed=request.include_closed,
            status=request.status,
            author=request.author,
            include_labels=not request.exclude_labels,
            limit=request.limit,
        )
        campaigns = self._store.listed(query, now=int(time.time()))
        return distributed_pb2.ListCampaignsResponse(
            campaigns=[campaign_message(c) for c in campaigns]
        )

    async def CancelCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.Campaign:
        return campaign_message(await self._campaigns.cancel(request.campaign_id))

    async def WatchCampaigns(
        self, request: distributed_pb2.WatchCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[distributed_pb2.CampaignEvent]:
        async for event in self._feed.watch_campaigns():
            yield event

    async def WatchCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[distributed_pb2.CampaignProgress]:
        async for progress in self._feed.progress(request.campaign_id, request.counts_only):
            yield progress

    async def RecordActivity(
        self, request: distributed_pb2.ActivityBatch, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.RecordActivityResponse:
        outcome = self._campaigns.record_activity(
            [delivery_record(d) for d in request.deliveries],
            [answer_record(a) for a in request.answers],
        )
        return distributed_pb2.RecordActivityResponse(
            deliveries=len(outcome.delivered), answers=len(outcome.answers)
        )

    async def ListCarves(
        self, request: distributed_pb2.ListCarvesRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.ListCarvesResponse:
        carves = self._carves.listed(request)
        return distributed_pb2.ListCarvesResponse(carves=[carve_message(c) for c in carves])

    async def GetCarve(
        self, request: distributed_pb2.GetCarveRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.CarveInfo:
        return carve_message(self._carves.found(request.carve))

    async def DownloadCarve(
        self, request: distributed_pb2.GetCarveRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[distributed_pb2.CarveChunk]:
        async for chunk in self._carves.chunks(request.carve):
            yield chunk
