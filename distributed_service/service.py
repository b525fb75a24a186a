"""The DistributedService gRPC servicer: campaigns in, campaign events and progress out."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from distributed_service import metrics
from distributed_service.node_directory import NodeDirectory
from distributed_service.store import (
    ANSWERED,
    DELIVERED,
    EXPIRED,
    FAILED,
    OFFLINE,
    TARGETED,
    ActivityOutcome,
    AnswerRecord,
    CampaignRecord,
    CampaignStore,
    HostRecord,
)
from distributed_service.targeting import (
    DEFAULT_OFFLINE_AFTER_S,
    TargetNode,
    Targets,
    is_offline,
    select,
)
from osquery_config.targeting import FAMILIES
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.change_feed import ChangeFeed
from quarry.change_log import ChangeLog, Feed, Record, protobuf_feed

log = logging.getLogger(__name__)

Event = distributed_pb2.CampaignEvent
State = distributed_pb2.HostState
STATE_NUMBERS = {
    TARGETED: State.TARGETED,
    DELIVERED: State.DELIVERED,
    ANSWERED: State.ANSWERED,
    FAILED: State.FAILED,
    EXPIRED: State.EXPIRED,
    OFFLINE: State.OFFLINE,
}
# A campaign's progress stream ends when no host is left in these states.
WAITING_STATES = (TARGETED, DELIVERED)
VERSION_PATTERN = re.compile(r"\d+(\.\d+)*")


@dataclass(frozen=True)
class HostChanges:
    """Hosts of one campaign whose state changed (or closed: the campaign was)."""

    campaign_id: str
    node_ids: tuple[str, ...] = ()
    closed: bool = False

    def encode(self) -> bytes:
        return json.dumps([self.campaign_id, list(self.node_ids), self.closed]).encode()

    @classmethod
    def decode(cls, payload: bytes) -> HostChanges:
        campaign_id, node_ids, closed = json.loads(payload)
        return cls(campaign_id, tuple(node_ids), closed)


class DistributedServicer(distributed_pb2_grpc.DistributedServiceServicer):
    def __init__(self, store: CampaignStore, nodes: NodeDirectory, default_ttl_s: int) -> None:
        self._store = store
        self._nodes = nodes
        self._default_ttl_s = default_ttl_s
        self._feed: ChangeFeed[distributed_pb2.CampaignEvent] = ChangeFeed()
        self._host_feed: ChangeFeed[HostChanges] = ChangeFeed()
        # Both reach the watch streams of every replica through this (ADR 0009).
        self.changes = ChangeLog(
            store.database,
            "distributed",
            {
                "campaigns": protobuf_feed(self._feed.publish, Event),
                "hosts": Feed(self._host_feed.publish, HostChanges.encode, HostChanges.decode),
            },
        )
        self.show_gauges()

    def close_watches(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()
        self._host_feed.close()

    async def StartQuery(
        self, request: distributed_pb2.StartQueryRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.Campaign:
        problem = request_problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        targets = targets_of(request)
        campaign_id = "q_" + uuid.uuid4().hex  # letters, digits, "_": a safe osquery query id
        chosen = select(campaign_id, targets, *await self._directory(context, targets))
        if not chosen and not targets.is_open:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "no active node matches the targets"
            )
        now = int(time.time())
        offline_after = request.offline_after_seconds or DEFAULT_OFFLINE_AFTER_S
        campaign = CampaignRecord(
            campaign_id=campaign_id,
            sql=request.sql,
            target_all=targets.is_open and not (targets.tags or targets.platforms),
            node_ids=[] if targets.is_open else [n.node_id for n in chosen],
            created_at=now,
            expires_at=now + (request.ttl_seconds or self._default_ttl_s),
            cancelled=False,
            author=request.author,
            targeting={
                "tags": sorted(targets.tags),
                "platforms": sorted(targets.platforms),
                "labels": sorted(targets.labels),
                "percent": targets.percent,
                "min_osquery_version": targets.min_osquery_version,
            },
            discovery_sql=request.discovery_sql,
            open_targeting=targets.is_open,
            targeted=len(chosen),
        )
        message = campaign_message(campaign)
        with self.changes.recording() as record:
            self._store.create(campaign, first_states(chosen, now, offline_after))
            record("campaigns", Event(kind=Event.OPEN, campaign=message))
        await self.changes.settled()
        metrics.CAMPAIGNS_STARTED.inc()
        self.show_gauges()
        log.info(
            "campaign %s started by %r for %d hosts%s",
            campaign.campaign_id,
            campaign.author,
            len(chosen),
            " (and matching late joiners)" if targets.is_open else "",
        )
        return message

    async def _directory(
        self, context: grpc.aio.ServicerContext, targets: Targets
    ) -> tuple[list[TargetNode], dict[str, frozenset[str]]]:
        """Every active node, and label memberships when the targets need them."""
        try:
            nodes = await self._nodes.active_nodes()
        except grpc.aio.AioRpcError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot list nodes from the enroll service at {self._nodes.addr}:"
                f" {exc.code().name} {exc.details()}",
            )
            raise  # abort raises; this keeps the type checker sure we never return None
        if not targets.labels:
            return nodes, {}
        try:
            return nodes, await self._nodes.label_memberships()
        except grpc.aio.AioRpcError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read label memberships from the config service at"
                f" {self._nodes.config_addr}: {exc.code().name} {exc.details()}",
            )
            raise

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
        campaigns = self._store.campaigns(request.include_closed, now=int(time.time()))
        return distributed_pb2.ListCampaignsResponse(
            campaigns=[campaign_message(c) for c in campaigns]
        )

    async def CancelCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.Campaign:
        with self.changes.recording() as record:
            campaign = self._store.cancel(request.campaign_id, now=int(time.time()))
            if campaign is not None:
                _announce_close(record, campaign)
        await self.changes.settled()
        if campaign is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no campaign with id {request.campaign_id!r}"
            )
        self._count_closed([campaign], "cancelled")
        return campaign_message(campaign)

    def close_expired(self) -> int:
        """Announce CLOSE for campaigns that expired since the last call; returns how many.
        With replicas, each expired campaign is closed (and announced) by one of them."""
        with self.changes.recording() as record:
            expired = self._store.close_expired(now=int(time.time()))
            for campaign in expired:
                _announce_close(record, campaign)
        self._count_closed(expired, "expired")
        return len(expired)

    def _count_closed(self, campaigns: list[CampaignRecord], reason: str) -> None:
        for campaign in campaigns:
            metrics.CAMPAIGNS_CLOSED.labels(reason).inc()
            log.info("campaign %s %s", campaign.campaign_id, reason)
        if campaigns:
            self.show_gauges()

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

    async def WatchCampaign(
        self, request: distributed_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[distributed_pb2.CampaignProgress]:
        campaign_id = request.campaign_id
        with self._host_feed.subscribe() as live:
            campaign = self._store.campaign(campaign_id)
            if campaign is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no campaign with id {campaign_id!r}"
                )
            hosts = [] if request.counts_only else self._store.hosts(campaign_id)
            first = self._progress(campaign, hosts)
            yield first
            if first.done:
                return
            async for change in live:
                if change.campaign_id != campaign_id:
                    continue
                campaign = self._store.campaign(campaign_id) or campaign
                wanted = change.node_ids and not request.counts_only
                changed = self._store.hosts(campaign_id, change.node_ids) if wanted else []
                progress = self._progress(campaign, changed)
                yield progress
                if progress.done:
                    return

    def _progress(
        self, campaign: CampaignRecord, hosts: list[HostRecord]
    ) -> distributed_pb2.CampaignProgress:
        counts = self._store.counts(campaign.campaign_id)
        closed = campaign.cancelled or campaign.expires_at <= time.time()
        return distributed_pb2.CampaignProgress(
            campaign=campaign_message(campaign),
            counts=counts,
            hosts=[host_message(h) for h in hosts],
            closed=closed,
            done=closed or not any(counts[state] for state in WAITING_STATES),
        )

    async def RecordActivity(
        self, request: distributed_pb2.ActivityBatch, context: grpc.aio.ServicerContext
    ) -> distributed_pb2.RecordActivityResponse:
        deliveries = [
            (
                d.campaign_id,
                HostRecord(d.node_id, d.host_identifier, DELIVERED, delivered_at=d.delivered_at),
            )
            for d in request.deliveries
        ]
        answers = [answer_record(a) for a in request.answers]
        with self.changes.recording() as record:
            outcome = self._store.record_activity(deliveries, answers)
            _announce_activity(record, outcome)
        # No settled() here: the gateway's batched write never reads it back, and waiting for
        # the relay would hold every gateway's next batch for a round trip to PostgreSQL.
        for answer in outcome.answers:
            metrics.ANSWERS.labels(answer.host.state).inc()
            metrics.RESULT_ROWS.inc(answer.host.row_count)
        metrics.ANSWERS.labels("duplicate").inc(outcome.duplicate_answers)
        metrics.ANSWERS.labels("unknown_campaign").inc(outcome.unknown_campaign_answers)
        metrics.DELIVERIES.labels("new").inc(len(outcome.delivered))
        metrics.DELIVERIES.labels("repeat").inc(outcome.repeated_deliveries)
        metrics.DELIVERIES.labels("unknown_campaign").inc(outcome.unknown_campaign_deliveries)
        return distributed_pb2.RecordActivityResponse(
            deliveries=len(outcome.delivered), answers=len(outcome.answers)
        )

    def show_gauges(self) -> None:
        """Open campaigns and their hosts per state (bounded: one series per state)."""
        now = int(time.time())
        metrics.OPEN_CAMPAIGNS.set(self._store.count_open(now=now))
        counts = self._store.counts_in_open(now=now)
        for state, count in counts.items():
            metrics.OPEN_CAMPAIGN_HOSTS.labels(state).set(count)
        metrics.PENDING_DELIVERIES.set(counts[TARGETED] + counts[OFFLINE])


def _announce_close(record: Record, campaign: CampaignRecord) -> None:
    record("campaigns", Event(kind=Event.CLOSE, campaign=campaign_message(campaign)))
    record("hosts", HostChanges(campaign.campaign_id, closed=True))


def _announce_activity(record: Record, outcome: ActivityOutcome) -> None:
    """Each new answer to the gateways; the hosts that moved, per campaign, to progress
    watchers."""
    changed: dict[str, list[str]] = {}
    for campaign_id, host in outcome.delivered:
        changed.setdefault(campaign_id, []).append(host.node_id)
    for answer in outcome.answers:
        record("campaigns", answered_event(answer.campaign_id, answer.host.node_id))
        changed.setdefault(answer.campaign_id, []).append(answer.host.node_id)
    for campaign_id, node_ids in changed.items():
        record("hosts", HostChanges(campaign_id, tuple(dict.fromkeys(node_ids))))


def request_problem(request: distributed_pb2.StartQueryRequest) -> str:
    """What is wrong with a StartQuery request, or "" when nothing is."""
    if not request.sql.strip():
        return "the query SQL is empty"
    if request.ttl_seconds < 0 or request.offline_after_seconds < 0:
        return "ttl_seconds and offline_after_seconds must be >= 0"
    if not 0 <= request.percent <= 100:
        return f"percent must be between 0 and 100, not {request.percent}"
    unknown = sorted(set(request.platforms) - set(FAMILIES))
    if unknown:
        return f"unknown platform {', '.join(unknown)}: use {', '.join(FAMILIES)}"
    version = request.min_osquery_version
    if version and not VERSION_PATTERN.fullmatch(version):
        return f"min_osquery_version must look like 5.12.0, not {version!r}"
    return ""


def targets_of(request: distributed_pb2.StartQueryRequest) -> Targets:
    return Targets(
        node_ids=tuple(dict.fromkeys(n for n in request.node_ids if n)),
        tags=frozenset(t for t in request.tags if t),
        platforms=frozenset(request.platforms),
        labels=frozenset(label for label in request.labels if label),
        percent=request.percent,
        min_osquery_version=request.min_osquery_version,
    )


def first_states(
    chosen: list[TargetNode], launched_at: int, offline_after_s: int
) -> list[tuple[str, str, str]]:
    """(node id, host identifier, targeted or offline) for each host at launch."""
    return [
        (
            node.node_id,
            node.host_identifier,
            OFFLINE if is_offline(node, launched_at, offline_after_s) else TARGETED,
        )
        for node in chosen
    ]


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
        tags=campaign.targeting.get("tags", []),
        platforms=campaign.targeting.get("platforms", []),
        labels=campaign.targeting.get("labels", []),
        percent=campaign.targeting.get("percent", 0.0),
        min_osquery_version=campaign.targeting.get("min_osquery_version", ""),
        discovery_sql=campaign.discovery_sql,
        open_targeting=campaign.open_targeting,
        targeted=campaign.targeted,
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
