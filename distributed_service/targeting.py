"""Which enrolled nodes a campaign targets at launch, and which of them count as offline.

Targets combine as AND across kinds and OR within one kind: `--tag web --tag db
--platform linux` is "linux nodes tagged web or db", the one targeting model config
blocks and node lists share (osquery_config.targeting.Selection). A node's tags are its
secret's and the live config's node_tags. Explicit node ids are taken as given. The
percentage shard is stable: a node is in it when the hash of campaign id and node id
falls below the share, so re-running the same campaign id selects the same
nodes, and the gateway decides late joiners of open campaigns with the same function
(osquery_config/percentage_shard.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from osquery_config.percentage_shard import in_shard
from osquery_config.targeting import FAMILIES, Selection

# osquery's default distributed_interval is 60 s: a node unseen for two of them before
# launch has missed at least one read it would have made, so it is reported offline.
DEFAULT_OFFLINE_AFTER_S = 120


@dataclass(frozen=True)
class TargetNode:
    """What targeting reads from one enrolled node (EnrollService.ListNodes)."""

    node_id: str
    host_identifier: str
    platform: str
    osquery_version: str
    tags: frozenset[str]
    last_seen_at: int


@dataclass(frozen=True)
class Targets:
    """A campaign's targeting, as requested."""

    node_ids: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()
    platforms: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    percent: float = 0.0
    min_osquery_version: str = ""

    @property
    def is_open(self) -> bool:
        """Decided per read in the gateway (it knows tags and platform families, not
        labels, versions or exact platform names): matching nodes that show up after
        launch still get the campaign."""
        exact_platforms = not self.platforms <= set(FAMILIES)
        return not (self.node_ids or self.labels or self.min_osquery_version or exact_platforms)


def version_tuple(version: str) -> tuple[int, ...]:
    """ "5.12.1" -> (5, 12, 1); non-numeric parts ("5.12.1-dev") count only their digits."""
    return tuple(
        int(m) if m else 0 for m in (re.match(r"\d*", part)[0] for part in version.split("."))
    )


def matches(node: TargetNode, targets: Targets, labels_of: Mapping[str, frozenset[str]]) -> bool:
    """Whether a node is selected, percentage shard aside."""
    selection = Selection(tags=targets.tags, platforms=targets.platforms, labels=targets.labels)
    labels = labels_of.get(node.node_id, frozenset())
    if not selection.matches(node.platform, node.tags, labels):
        return False
    if not targets.min_osquery_version:
        return True
    return version_tuple(node.osquery_version) >= version_tuple(targets.min_osquery_version)


def select(
    campaign_id: str,
    targets: Targets,
    nodes: Iterable[TargetNode],
    labels_of: Mapping[str, frozenset[str]],
) -> list[TargetNode]:
    """The nodes a campaign targets at launch, in the order given."""
    if targets.node_ids:
        known = {node.node_id: node for node in nodes}
        # An explicit id the enroll service does not list (revoked, pending, mistyped)
        # is still accounted for: it will expire rather than vanish from the report.
        chosen = [
            known.get(n) or TargetNode(n, "", "", "", frozenset(), 0) for n in targets.node_ids
        ]
        candidates = [n for n in chosen if n.node_id not in known or matches(n, targets, labels_of)]
    else:
        candidates = [n for n in nodes if matches(n, targets, labels_of)]
    return [n for n in candidates if in_shard(campaign_id, n.node_id, targets.percent)]


def is_offline(node: TargetNode, launched_at: int, offline_after_s: int) -> bool:
    return node.last_seen_at < launched_at - offline_after_s
