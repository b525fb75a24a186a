"""Campaign and host records as protobuf messages, and answers from them."""

from __future__ import annotations

import time

from distributed_service.store import (
    ANSWERED,
    DELIVERED,
    EXPIRED,
    FAILED,
    OFFLINE,
    TARGETED,
    AnswerRecord,
    CampaignRecord,
    HostRecord,
)
from protos.v1 import distributed_pb2

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


def answered_event(campaign_id: str, node_id: str) -> distributed_pb2.CampaignEvent:
    return Event(
        kind=Event.ANSWERED,
        campaign=distributed_pb2.Campaign(campaign_id=campaign_id),
        node_id=node_id,
    )


def delivery_record(delivery: distributed_pb2.Delivery) -> tuple[str, HostRecord]:
    """(campaign id, the host's new state) for a delivery the gateway reports."""
    host = HostRecord(
        delivery.node_id, delivery.host_identifier, DELIVERED, delivered_at=delivery.delivered_at
    )
    return delivery.campaign_id, host


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
