"""Open live query campaigns, in memory: what a distributed read hands out.

Fed by DistributedService.WatchCampaigns: each open campaign, and which nodes
already answered it. A node gets every open campaign that targets it and that it has
not answered; it keeps getting it on each read until its answer arrives (a read whose
response was lost is then harmless, and osquery overwrites a pending id it is sent
again). With no open campaign the answer is an empty dict, without any work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from gateway import metrics
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.grpc_runtime import run_forever_with_reconnect

log = logging.getLogger(__name__)

Event = distributed_pb2.CampaignEvent


@dataclass(slots=True)
class OpenCampaign:
    campaign_id: str
    sql: str
    target_all: bool
    node_ids: frozenset[str]
    expires_at: int
    answered: set[str] = field(default_factory=set)

    def wanted_by(self, node_id: str, now: float) -> bool:
        return (
            now < self.expires_at
            and (self.target_all or node_id in self.node_ids)
            and node_id not in self.answered
        )


class LiveQueries:
    def __init__(self, stub: distributed_pb2_grpc.DistributedServiceStub) -> None:
        self._stub = stub
        self._open: dict[str, OpenCampaign] = {}
        self.synced = asyncio.Event()

    def pending_for(self, node_id: str) -> dict[str, str]:
        """Campaign id -> SQL for every open campaign this node still has to answer."""
        if not self._open:
            return {}
        now = time.time()
        return {c.campaign_id: c.sql for c in self._open.values() if c.wanted_by(node_id, now)}

    def mark_answered(self, campaign_id: str, node_id: str) -> None:
        campaign = self._open.get(campaign_id)
        if campaign is not None:
            campaign.answered.add(node_id)

    async def run(self) -> None:
        await run_forever_with_reconnect("campaigns", self._watch_once)

    async def _watch_once(self) -> None:
        fresh: dict[str, OpenCampaign] | None = {}
        async for event in self._stub.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()):
            target = self._open if fresh is None else fresh
            if event.kind == Event.SNAPSHOT_DONE and fresh is not None:
                self._open, fresh = fresh, None
                metrics.WATCH_SYNCED.labels("campaigns").set(1)
                self.synced.set()
                log.info("live queries synced: %d open", len(self._open))
            else:
                _apply(target, event)
            metrics.LIVE_QUERIES_OPEN.set(len(self._open))
        metrics.WATCH_SYNCED.labels("campaigns").set(0)


def _apply(campaigns: dict[str, OpenCampaign], event: distributed_pb2.CampaignEvent) -> None:
    c = event.campaign
    if event.kind == Event.OPEN:
        campaigns[c.campaign_id] = OpenCampaign(
            c.campaign_id, c.sql, c.target_all, frozenset(c.node_ids), c.expires_at
        )
    elif event.kind == Event.CLOSE:
        campaigns.pop(c.campaign_id, None)
    elif event.kind == Event.ANSWERED:
        campaign = campaigns.get(c.campaign_id)
        if campaign is not None:
            campaign.answered.add(event.node_id)
