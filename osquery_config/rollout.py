"""Which nodes get a staged rollout's candidate config.

A node's bucket is a stable hash of the node id and the candidate version, so the same
nodes stay in the canary for the whole rollout (every gateway agrees without talking),
and a new candidate draws a fresh sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol


class RolloutLike(Protocol):
    """The fields of protos.v1.config_pb2.Rollout that selection reads."""

    candidate_version: int
    percent: int
    node_ids: Sequence[str]


def rollout_bucket(node_id: str, candidate_version: int) -> int:
    """The node's bucket, 0..99, for this candidate."""
    digest = hashlib.sha256(f"{candidate_version}:{node_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 100


def gets_candidate(node_id: str, rollout: RolloutLike) -> bool:
    """Does this node run the candidate (listed by id, or its bucket below the percentage)?"""
    if rollout.candidate_version == 0:
        return False
    if node_id in rollout.node_ids:
        return True
    bucket = rollout_bucket(node_id, rollout.candidate_version)
    return rollout.percent > 0 and bucket < rollout.percent


def nodes_for_count(node_ids: Iterable[str], candidate_version: int, count: int) -> list[str]:
    """`count` nodes for a canary, lowest buckets first (ties by node id): a stable choice."""
    ranked = sorted(set(node_ids), key=lambda node: (rollout_bucket(node, candidate_version), node))
    return ranked[: max(count, 0)]
