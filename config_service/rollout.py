"""Staged rollouts: which nodes get the candidate, and the Rollout message gateways hold.

A percentage needs no list: each node's bucket (osquery_config.rollout_bucket) decides,
so new nodes join in the same proportion. A count is resolved once, at start, to the
active nodes with the lowest buckets, so it stays exactly that many nodes.
"""

from __future__ import annotations

from config_service.store import Rollout
from protos.v1 import config_pb2

MAX_CANARY_PERCENT = 99


class InvalidCanary(ValueError):
    """The requested canary size makes no sense; the message says why."""


def check_canary(percent: int, count: int) -> None:
    if percent and count:
        raise InvalidCanary("give a canary percent or a canary count, not both")
    if percent and not 1 <= percent <= MAX_CANARY_PERCENT:
        raise InvalidCanary(f"canary percent must be 1..{MAX_CANARY_PERCENT}, got {percent}")
    if count < 0:
        raise InvalidCanary(f"canary count must be positive, got {count}")


def rollout_message(rollout: Rollout | None) -> config_pb2.Rollout:
    """The Rollout message; candidate_version 0 when none is in progress."""
    if rollout is None:
        return config_pb2.Rollout()
    return config_pb2.Rollout(
        candidate_version=rollout.candidate_version,
        candidate_state_json=rollout.candidate.state_json,
        percent=rollout.percent,
        node_ids=rollout.node_ids,
        started_at=rollout.started_at,
        author=rollout.author,
    )
