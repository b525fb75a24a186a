"""A stable percentage of nodes: the same campaign and node always give the same answer.

The distributed service applies it when a campaign starts, and the gateway again when a
node that was not there at the start reads an open campaign; both must agree exactly.
"""

from __future__ import annotations

import hashlib

SHARD_BUCKETS = 10_000


def in_shard(campaign_id: str, node_id: str, percent: float) -> bool:
    """Whether the node falls in the campaign's `percent` of nodes (0 or 100+: every node)."""
    if percent <= 0 or percent >= 100:
        return True
    digest = hashlib.sha256(f"{campaign_id}\0{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SHARD_BUCKETS < percent * SHARD_BUCKETS / 100
