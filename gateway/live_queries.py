"""Open live query campaigns, in memory: what a distributed read hands out.

Fed by DistributedService.WatchCampaigns: each open campaign, and which nodes
already answered it. A node gets every open campaign that targets it and that it has
not answered; it keeps getting it on each read until its answer arrives (a read whose
response was lost is then harmless, and osquery overwrites a pending id it is sent
again). With no open campaign the answer is an empty dict, without any work.

Campaigns are indexed by what selects them, so a read looks only at the campaigns that
can concern its node, never at every campaign: campaigns for explicit nodes (node ids,
labels and minimum versions were resolved into node ids at launch) by node id; open
campaigns (all, tags, platforms; decided here, so nodes that enroll or come back later
still get them) by their first tag, else platform family, else "everyone". A node's tags
are its secret's and those the live config's node_tags give it (ADR 0013).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway import metrics
from gateway.node_cache import NodeIdentity
from osquery_config.percentage_shard import in_shard
from osquery_config.targeting import Selection, platform_family
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.serving.grpc_runtime import run_forever_with_reconnect

log = logging.getLogger(__name__)

Event = distributed_pb2.CampaignEvent


@dataclass(slots=True)
class OpenCampaign:
    campaign_id: str
    sql: str
    discovery_sql: str
    expires_at: int
    # Open targeting: every node matching tags (any), platforms (any) and the shard.
    is_open: bool
    tags: frozenset[str]
    platforms: frozenset[str]
    percent: float
    # Closed targeting: exactly these nodes.
    node_ids: frozenset[str]
    answered: set[str] = field(default_factory=set)
    selection: Selection = field(init=False)

    def __post_init__(self) -> None:
        # The targeting every component shares: AND across kinds, any within one.
        self.selection = Selection(tags=self.tags, platforms=self.platforms)

    def index_keys(self) -> list[str]:
        if not self.is_open:
            return [f"node:{n}" for n in self.node_ids]
        if self.tags:
            return [f"tag:{t}" for t in self.tags]
        if self.platforms:
            return [f"family:{p}" for p in self.platforms]
        return ["everyone"]

    def wanted_by(self, node: NodeIdentity, family: str, tags: frozenset[str], now: float) -> bool:
        """`tags`: every tag of the node (its secret's and the live config's node_tags)."""
        if now >= self.expires_at or node.node_id in self.answered:
            return False
        if not self.is_open:
            return node.node_id in self.node_ids
        return self.selection.matches(family, tags) and in_shard(
            self.campaign_id, node.node_id, self.percent
        )


class CampaignIndex:
    """Open campaigns by id, and their ids by what selects them."""

    def __init__(self) -> None:
        self.by_id: dict[str, OpenCampaign] = {}
        self._by_key: dict[str, set[str]] = {}

    def add(self, campaign: OpenCampaign) -> None:
        self.remove(campaign.campaign_id)
        self.by_id[campaign.campaign_id] = campaign
        for key in campaign.index_keys():
            self._by_key.setdefault(key, set()).add(campaign.campaign_id)

    def remove(self, campaign_id: str) -> None:
        campaign = self.by_id.pop(campaign_id, None)
        if campaign is None:
            return
        for key in campaign.index_keys():
            ids = self._by_key.get(key)
            if ids is not None:
                ids.discard(campaign_id)
                if not ids:
                    del self._by_key[key]

    def candidates(
        self, node: NodeIdentity, family: str, tags: frozenset[str] | None = None
    ) -> set[str]:
        """Ids of the campaigns that can concern this node (a superset of its pending ones);
        `tags`: every tag of the node (by default its secret's)."""
        keys = ["everyone", f"node:{node.node_id}", f"family:{family}"]
        keys.extend(f"tag:{tag}" for tag in (node.tags if tags is None else tags))
        found: set[str] = set()
        for key in keys:
            found.update(self._by_key.get(key, ()))
        return found


def secret_tags(node: NodeIdentity) -> frozenset[str]:
    return frozenset(node.tags)


class LiveQueries:
    def __init__(
        self,
        stub: distributed_pb2_grpc.DistributedServiceStub,
        tags_of: Callable[[NodeIdentity], frozenset[str]] = secret_tags,
    ) -> None:
        """`tags_of`: every tag of a node (the config cache adds the live node_tags)."""
        self._stub = stub
        self._tags_of = tags_of
        self._index = CampaignIndex()
        self.synced = asyncio.Event()

    def pending_for(self, node: NodeIdentity) -> list[OpenCampaign]:
        """Every open campaign this node still has to answer."""
        if not self._index.by_id:
            return []
        now = time.time()
        family = platform_family(node.platform)
        tags = self._tags_of(node)
        found = (self._index.by_id[i] for i in self._index.candidates(node, family, tags))
        return [c for c in found if c.wanted_by(node, family, tags, now)]

    def mark_answered(self, campaign_id: str, node_id: str) -> None:
        campaign = self._index.by_id.get(campaign_id)
        if campaign is not None:
            campaign.answered.add(node_id)

    async def run(self) -> None:
        await run_forever_with_reconnect("campaigns", self._watch_once)

    async def _watch_once(self) -> None:
        fresh: CampaignIndex | None = CampaignIndex()
        async for event in self._stub.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()):
            target = self._index if fresh is None else fresh
            if event.kind == Event.SNAPSHOT_DONE and fresh is not None:
                self._index, fresh = fresh, None
                metrics.WATCH_SYNCED.labels("campaigns").set(1)
                self.synced.set()
                log.info("live queries synced: %d open", len(self._index.by_id))
            else:
                _apply(target, event)
            metrics.LIVE_QUERIES_OPEN.set(len(self._index.by_id))
        metrics.WATCH_SYNCED.labels("campaigns").set(0)


def _apply(index: CampaignIndex, event: distributed_pb2.CampaignEvent) -> None:
    c = event.campaign
    if event.kind == Event.OPEN:
        index.add(
            OpenCampaign(
                campaign_id=c.campaign_id,
                sql=c.sql,
                discovery_sql=c.discovery_sql,
                expires_at=c.expires_at,
                # Campaigns stored before open_targeting existed: target_all was the open kind.
                is_open=c.open_targeting or c.target_all,
                tags=frozenset(c.tags),
                platforms=frozenset(c.platforms),
                percent=c.percent,
                node_ids=frozenset(c.node_ids),
            )
        )
    elif event.kind == Event.CLOSE:
        index.remove(c.campaign_id)
    elif event.kind == Event.ANSWERED:
        campaign = index.by_id.get(c.campaign_id)
        if campaign is not None:
            campaign.answered.add(event.node_id)
