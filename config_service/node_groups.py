"""The node groups present in the fleet, for checking and diffing a state before it goes live.

A state renders one config per node group (osquery_config.targeting.group_of), so an
apply composes and checks each group some node is in now, plus the global group every
new node starts in, rather than every node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from config_service.fleet_directory import FleetNode
from osquery_config.composition import compose
from osquery_config.diff import diff_states
from osquery_config.state import State
from osquery_config.targeting import NodeFacts, NodeGroup, group_of, node_tags_for
from osquery_config.validation import check_rendered

# A node that only global targets match: no platform known, no tags, no labels.
GLOBAL_FACTS = NodeFacts(node_id="", platform="", tags=frozenset(), labels=frozenset())


@dataclass(frozen=True)
class GroupChange:
    group: str
    nodes: int
    diff: str


def node_facts(
    state: State, node: FleetNode, memberships: Mapping[str, frozenset[str]]
) -> NodeFacts:
    """What targeting knows of a node under `state` (its node_tags belong to the state)."""
    return NodeFacts(
        node_id=node.node_id,
        platform=node.platform,
        tags=node.tags | node_tags_for(state, node.node_id, node.host_identifier),
        labels=memberships.get(node.node_id, frozenset()),
    )


def unknown_node_tags(state: State, nodes: Iterable[FleetNode]) -> list[str]:
    """A warning for each node_tags entry no active node has as its id or host identifier
    (a typo, or a host not enrolled yet: the tags apply once one is)."""
    known = set()
    for node in nodes:
        known.update((node.node_id, node.host_identifier))
    return [
        f"node_tags: no active node has id or host identifier {name!r}"
        " (its tags apply once such a node enrolls)"
        for name in state.node_tags
        if name not in known
    ]


def fleet_groups(
    state: State, nodes: Iterable[FleetNode], memberships: Mapping[str, frozenset[str]]
) -> Counter[NodeGroup]:
    """Each group some node is in under `state`, with its node count; always the global group."""
    groups: Counter[NodeGroup] = Counter({group_of(state, GLOBAL_FACTS): 0})
    groups.update(group_of(state, node_facts(state, node, memberships)) for node in nodes)
    return groups


def check_groups(state: State, groups: Iterable[NodeGroup]) -> list[str]:
    """Compose every group and check what osquery would get; the conflicts, deduplicated.

    Raises InvalidState (naming the group) when a rendered config is too big or deep.
    """
    conflicts: dict[str, None] = {}
    for group in groups:
        composed = compose(state, group)
        try:
            check_rendered(composed.config_json)
        except ValueError as exc:
            raise type(exc)(f"group {group.describe()}: {exc}") from None
        conflicts.update(dict.fromkeys(composed.conflicts))
    return list(conflicts)


def group_changes(
    old: State,
    new: State,
    nodes: Iterable[FleetNode],
    memberships: Mapping[str, frozenset[str]],
) -> list[GroupChange]:
    """Per node group, the diff of its rendered config from old to new (changed groups only).

    A node's group under old and under new may keep different tags or labels, so each
    node is counted in the union of both, which renders both states correctly.
    """
    counts: Counter[NodeGroup] = Counter({_joint_group(old, new, GLOBAL_FACTS, GLOBAL_FACTS): 0})
    for node in nodes:
        old_facts = node_facts(old, node, memberships)
        new_facts = node_facts(new, node, memberships)
        counts[_joint_group(old, new, old_facts, new_facts)] += 1
    return [
        GroupChange(group.describe(), counts[group], diff)
        for group, diff in diff_states(old, new, counts)
    ]


def _joint_group(old: State, new: State, old_facts: NodeFacts, new_facts: NodeFacts) -> NodeGroup:
    before = group_of(old, old_facts)
    after = group_of(new, new_facts)
    return NodeGroup(
        family=after.family,
        tags=before.tags | after.tags,
        labels=before.labels | after.labels,
        node_id=after.node_id or before.node_id,
    )
