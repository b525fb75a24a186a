"""The DistributedService gRPC servicer: campaigns in, campaign events out."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from distributed_service import metrics
from distributed_service.node_directory import NodeDirectory
from distributed_service.store import (
    ANSWERED,
    DELIVERED,
    FAILED,
    TARGETED,
    AnswerRecord,
    CampaignRecord,
    CampaignStore,
    HostRecord,
)
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.change_feed import ChangeFeed

log = logging.getLogger(__name__)

Event = distributed_pb2.CampaignEvent
State = distributed_pb2.HostState
STATE_NUMBERS = {
    TARGETED: State.TARGETED,
    DELIVERED: State.DELIVERED,
    ANSWERED: State.ANSWERED,
    FAILED: State.FAILED,
}


class DistributedServicer(distributed_pb2_grpc.DistributedServiceServicer):
    def __init__(self, store: CampaignStore, nodes: NodeDirectory, default_ttl_s: int) -> None:
        self._store = store
        self._nodes = nodes
        self._default_ttl_s = default_ttl_s
        self._feed: ChangeFeed[distributed_pb2.CampaignEvent] = ChangeFeed()
        self._show_open()

    def close_watches(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()

    async def StartQuery(
        self, request: distributed_pb2.StartQueryRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.Campaign:
        if not request.sql.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the query SQL is empty")
        if request.ttl_seconds < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds must be >= 0")
        node_ids = list(dict.fromkeys(n for n in request.node_ids if n))
        tags = [tag for tag in request.tags if tag]
        if node_ids:
            targets = [(node_id, "") for node_id in node_ids]
        else:
            targets = await self._active_nodes(context, tags)
        if tags:
            if not targets:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"no active node has a tag of {tags}"
                )
            node_ids = [node_id for node_id, _ in targets]
        now = int(time.time())
        campaign = CampaignRecord(
            # Letters, digits and "_" only: safe as an osquery distributed query id.
            campaign_id="q_" + uuid.uuid4().hex,
            sql=request.sql,
            target_all=not node_ids,
            node_ids=node_ids,
            created_at=now,
            expires_at=now + (request.ttl_seconds or self._default_ttl_s),
            cancelled=False,
            author=request.author,
        )
        self._store.create(campaign, targets)
        message = campaign_message(campaign)
        self._feed.publish(Event(kind=Event.OPEN, campaign=message))
        metrics.CAMPAIGNS_STARTED.inc()
        self._show_open()
        log.info(
            "campaign %s started by %r for %d hosts",
            campaign.campaign_id,
            campaign.author,
            len(targets),
        )
        return message

    async def _active_nodes(
        self, context: grpc.aio.ServicerContext, tags: list[str]
    ) -> list[tuple[str, str]]:
        try:
            return await self._nodes.active_nodes(tags)
        except grpc.aio.AioRpcError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot list nodes from the enroll service at {self._nodes.addr}:"
                f" {exc.code().name} {exc.details()}",
            )
            raise  # abort raises; this keeps the type checker sure we never return None

    async def GetCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.CampaignReport:
        campaign = self._store.campaign(request.campaign_id)
        if campaign is None:
            return distributed_pb2.CampaignReport(found=False)
        hosts = [host_message(h) for h in self._store.hosts(campaign.campaign_id)]
        return distributed_pb2.CampaignReport(
            campaign=campaign_message(campaign), hosts=hosts, found=True
        )

    async def ListCampaigns(
        self, request: distributed_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.ListCampaignsResponse:
        campaigns = self._store.campaigns(request.include_closed, now=int(time.time()))
        return distributed_pb2.ListCampaignsResponse(
            campaigns=[campaign_message(c) for c in campaigns]
        )

    async def CancelCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.Campaign:
        campaign = self._store.cancel(request.campaign_id, now=int(time.time()))
        if campaign is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no campaign with id {request.campaign_id!r}"
            )
        message = campaign_message(campaign)
        self._feed.publish(Event(kind=Event.CLOSE, campaign=message))
        metrics.CAMPAIGNS_CLOSED.labels("cancelled").inc()
        self._show_open()
        log.info("campaign %s cancelled", campaign.campaign_id)
        return message

    def close_expired(self) -> int:
        """Announce CLOSE for campaigns that expired since the last call; returns how many."""
        expired = self._store.close_expired(now=int(time.time()))
        for campaign in expired:
            self._feed.publish(Event(kind=Event.CLOSE, campaign=campaign_message(campaign)))
            metrics.CAMPAIGNS_CLOSED.labels("expired").inc()
            log.info("campaign %s expired", campaign.campaign_id)
        self._show_open()
        return len(expired)

    async def WatchCampaigns(
        self, request: distributed_pb2.WatchCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[distributed_pb2.CampaignEvent]:
        metrics.WATCH_STREAMS.inc()
        try:
            # Subscribe before reading the snapshot: nothing can slip in between.
            with self._feed.subscribe() as live:
                now = int(time.time())
                for campaign in self._store.campaigns(include_closed=False, now=now):
                    yield Event(kind=Event.OPEN, campaign=campaign_message(campaign))
                for campaign_id, node_id in self._store.answered_in_open(now):
                    yield answered_event(campaign_id, node_id)
                yield Event(kind=Event.SNAPSHOT_DONE)
                async for event in live:
                    yield event
        finally:
            metrics.WATCH_STREAMS.dec()

    async def RecordActivity(
        self, request: distributed_pb2.ActivityBatch, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.RecordActivityResponse:
        deliveries = [(d.campaign_id, d.node_id, d.delivered_at) for d in request.deliveries]
        answers = [answer_record(a) for a in request.answers]
        outcome = self._store.record_activity(deliveries, answers)
        for campaign_id, node_id, state in outcome.answers or []:
            self._feed.publish(answered_event(campaign_id, node_id))
            metrics.ANSWERS.labels(state).inc()
        metrics.ANSWERS.labels("duplicate").inc(outcome.duplicate_answers)
        metrics.ANSWERS.labels("unknown_campaign").inc(outcome.unknown_campaign_answers)
        metrics.DELIVERIES.labels("new").inc(outcome.deliveries)
        metrics.DELIVERIES.labels("repeat").inc(outcome.repeated_deliveries)
        metrics.DELIVERIES.labels("unknown_campaign").inc(outcome.unknown_campaign_deliveries)
        return distributed_pb2.RecordActivityResponse(
            deliveries=outcome.deliveries, answers=len(outcome.answers or [])
        )

    def _show_open(self) -> None:
        metrics.OPEN_CAMPAIGNS.set(self._store.count_open(now=int(time.time())))


def answered_event(campaign_id: str, node_id: str) -> distributed_pb2.CampaignEvent:
    return Event(
        kind=Event.ANSWERED,
        campaign=distributed_pb2.Campaign(campaign_id=campaign_id),
        node_id=node_id,
    )


def answer_record(answer: distributed_pb2.Answer) -> AnswerRecord:
    # osquery reports 0 on success and 1 on any failure (SQL error, denylisted).
    return AnswerRecord(
        campaign_id=answer.campaign_id,
        host=HostRecord(
            node_id=answer.node_id,
            host_identifier=answer.host_identifier,
            state=ANSWERED if answer.status == 0 else FAILED,
            status=answer.status,
            message=answer.message,
            row_count=answer.row_count,
            wall_time_ms=answer.stats.wall_time_ms,
            user_time=answer.stats.user_time,
            system_time=answer.stats.system_time,
            memory=answer.stats.memory,
            answered_at=answer.answered_at or int(time.time()),
        ),
    )


def campaign_message(campaign: CampaignRecord) -> distributed_pb2.Campaign:
    return distributed_pb2.Campaign(
        campaign_id=campaign.campaign_id,
        sql=campaign.sql,
        target_all=campaign.target_all,
        node_ids=campaign.node_ids,
        created_at=campaign.created_at,
        expires_at=campaign.expires_at,
        cancelled=campaign.cancelled,
        author=campaign.author,
    )


def host_message(host: HostRecord) -> distributed_pb2.HostState:
    return distributed_pb2.HostState(
        node_id=host.node_id,
        host_identifier=host.host_identifier,
        state=STATE_NUMBERS[host.state],
        status=host.status,
        message=host.message,
        row_count=host.row_count,
        stats=distributed_pb2.QueryStats(
            wall_time_ms=host.wall_time_ms,
            user_time=host.user_time,
            system_time=host.system_time,
            memory=host.memory,
        ),
        delivered_at=host.delivered_at,
        answered_at=host.answered_at,
    )
