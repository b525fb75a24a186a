"""Campaigns once started: cancelled, expired, the gateways' deliveries and answers
recorded, and the gauges of the open ones (docs/live-queries.md)."""

from __future__ import annotations

import logging
import time

import grpc

from distributed_service import metrics
from distributed_service.campaign_feed import announce_activity, announce_close
from distributed_service.store import (
    OFFLINE,
    TARGETED,
    ActivityOutcome,
    AnswerRecord,
    CampaignRecord,
    CampaignStore,
    HostRecord,
)
from quarry.access.admin_auth import Refused
from quarry.state.change_log import ChangeLog

log = logging.getLogger(__name__)


class Campaigns:
    def __init__(self, store: CampaignStore, changes: ChangeLog) -> None:
        self._store = store
        self._changes = changes

    async def cancel(self, campaign_id: str) -> CampaignRecord:
        with self._changes.recording() as record:
            campaign = self._store.cancel(campaign_id, now=int(time.time()))
            if campaign is not None:
                announce_close(record, campaign)
        await self._changes.settled()
        if campaign is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no campaign with id {campaign_id!r}")
        self._count_closed([campaign], "cancelled")
        return campaign

    def close_expired(self) -> int:
        """Announce CLOSE for campaigns that expired since the last call; returns how many.
        With replicas, each expired campaign is closed (and announced) by one of them."""
        with self._changes.recording() as record:
            expired = self._store.close_expired(now=int(time.time()))
            for campaign in expired:
                announce_close(record, campaign)
        self._count_closed(expired, "expired")
        return len(expired)

    def _count_closed(self, campaigns: list[CampaignRecord], reason: str) -> None:
        for campaign in campaigns:
            metrics.CAMPAIGNS_CLOSED.labels(reason).inc()
            log.info("campaign %s %s", campaign.campaign_id, reason)
        if campaigns:
            self.show_gauges()

    def record_activity(
        self, deliveries: list[tuple[str, HostRecord]], answers: list[AnswerRecord]
    ) -> ActivityOutcome:
        with self._changes.recording() as record:
            outcome = self._store.record_activity(deliveries, answers)
            announce_activity(record, outcome)
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
        return outcome

    def show_gauges(self) -> None:
        """Open campaigns and their hosts per state (bounded: one series per state)."""
        now = int(time.time())
        metrics.OPEN_CAMPAIGNS.set(self._store.count_open(now=now))
        counts = self._store.counts_in_open(now=now)
        for state, count in counts.items():
            metrics.OPEN_CAMPAIGN_HOSTS.labels(state).set(count)
        metrics.PENDING_DELIVERIES.set(counts[TARGETED] + counts[OFFLINE])
