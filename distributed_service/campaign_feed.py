"""The campaign change feeds: what WatchCampaigns streams to the gateways (campaigns
opening, closing, answered by a node) and WatchCampaign to an analyst (one campaign's
progress), from every replica (ADR 0009).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc

from distributed_service import metrics
from distributed_service.messages import Event, answered_event, campaign_message, host_message
from distributed_service.store import (
    DELIVERED,
    TARGETED,
    ActivityOutcome,
    CampaignRecord,
    CampaignStore,
    HostRecord,
)
from protos.v1 import distributed_pb2
from quarry.access.admin_auth import Refused
from quarry.state.change_feed import ChangeFeed, watch
from quarry.state.change_log import ChangeLog, Feed, Record, protobuf_feed

# A campaign's progress stream ends when no host is left in these states.
WAITING_STATES = (TARGETED, DELIVERED)


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


class CampaignFeed:
    def __init__(self, store: CampaignStore) -> None:
        self._store = store
        self._feed: ChangeFeed[distributed_pb2.CampaignEvent] = ChangeFeed()
        self._host_feed: ChangeFeed[HostChanges] = ChangeFeed()
        self.changes = ChangeLog(
            store.database,
            "distributed",
            {
                "campaigns": protobuf_feed(self._feed.publish, Event),
                "hosts": Feed(self._host_feed.publish, HostChanges.encode, HostChanges.decode),
            },
        )

    def close(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()
        self._host_feed.close()

    def watch_campaigns(self) -> AsyncIterator[distributed_pb2.CampaignEvent]:
        """Every open campaign and who answered it, SNAPSHOT_DONE, then each change."""
        return watch(self._feed, self._snapshot, metrics.WATCH_STREAMS)

    def _snapshot(self) -> Iterator[distributed_pb2.CampaignEvent]:
        now = int(time.time())
        for campaign in self._store.campaigns(include_closed=False, now=now):
            yield Event(kind=Event.OPEN, campaign=campaign_message(campaign))
        for campaign_id, node_id in self._store.answered_in_open(now):
            yield answered_event(campaign_id, node_id)
        yield Event(kind=Event.SNAPSHOT_DONE)

    async def progress(
        self, campaign_id: str, counts_only: bool
    ) -> AsyncIterator[distributed_pb2.CampaignProgress]:
        """The campaign's counts (and hosts), then each change of them, until it is done."""
        with self._host_feed.subscribe() as live:
            campaign = self._store.campaign(campaign_id)
            if campaign is None:
                raise Refused(grpc.StatusCode.NOT_FOUND, f"no campaign with id {campaign_id!r}")
            hosts = [] if counts_only else self._store.hosts(campaign_id)
            first = self._progress(campaign, hosts)
            yield first
            if first.done:
                return
            async for change in live:
                if change.campaign_id != campaign_id:
                    continue
                campaign = self._store.campaign(campaign_id) or campaign
                wanted = change.node_ids and not counts_only
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


def announce_open(record: Record, message: distributed_pb2.Campaign) -> None:
    record("campaigns", Event(kind=Event.OPEN, campaign=message))


def announce_close(record: Record, campaign: CampaignRecord) -> None:
    record("campaigns", Event(kind=Event.CLOSE, campaign=campaign_message(campaign)))
    record("hosts", HostChanges(campaign.campaign_id, closed=True))


def announce_activity(record: Record, outcome: ActivityOutcome) -> None:
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
