"""The one targeting model (config blocks, live queries, node lists), which blocks apply to
a node, and which nodes share one rendered config (a node group).

Targets combine as AND across kinds and any within one kind: `{platforms: [linux],
tags: [prod, staging]}` is "Linux nodes tagged prod or staging" (Selection.matches, the
only definition; docs/config.md, "Targeting"). A node's tags are its enroll secret's and
those the live config's `node_tags` gives it (node_tags_for; ADR 0013).

A node's config depends only on its platform family and on the tags, labels and node id
that some block actually targets. Reducing a node to those facts (its NodeGroup) lets the
gateway render each distinct config once and serve it to every node of the group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from osquery_config.state import Block, State, Targets

FAMILIES = ("linux", "darwin", "windows", "freebsd")
POSIX_FAMILIES = frozenset({"linux", "darwin", "freebsd"})
# os_version.platform values (osquery's own names) of Linux distributions.
LINUX_PLATFORMS = frozenset(
    {
        "linux", "ubuntu", "debian", "rhel", "centos", "amzn", "fedora", "arch", "gentoo",
        "opensuse", "opensuse-leap", "opensuse-tumbleweed", "sles", "suse", "manjaro", "nixos",
        "rocky", "almalinux", "ol", "oracle", "alpine", "raspbian", "kali", "linuxmint", "pop",
        "elementary", "scientific", "photon", "mariner", "azurelinux", "bottlerocket", "flatcar",
    }
)  # fmt: skip
OTHER_PLATFORMS = {
    "darwin": "darwin", "macos": "darwin", "windows": "windows", "freebsd": "freebsd",
}  # fmt: skip


def platform_family(platform: str) -> str:
    """osquery's family ("linux", "darwin", "windows", "freebsd") of an os_version.platform."""
    name = platform.strip().lower()
    if name in LINUX_PLATFORMS:
        return "linux"
    return OTHER_PLATFORMS.get(name, "")


def known_platform(name: str) -> bool:
    """Whether a name people type is a family or an os_version.platform name Quarry knows."""
    wanted = name.strip().lower()
    return wanted in FAMILIES or bool(platform_family(wanted))


def platform_selected(wanted: str, platform: str) -> bool:
    """Whether a node of this os_version.platform is selected by `wanted`, a family
    ("linux") or an exact name ("ubuntu"): node lists and live queries take either."""
    wanted = wanted.strip().lower()
    name = platform.strip().lower()
    return bool(wanted) and (wanted == name or wanted == platform_family(name))


def platform_matches(query_platform: str, family: str) -> bool:
    """osquery's checkPlatform: would a node of this family run a query or pack with this platform?

    An unknown family ("") matches everything: osquery on the node filters for itself.
    """
    wanted = query_platform.lower()
    if not family or wanted in ("", "null") or "any" in wanted or "all" in wanted:
        return True
    if "posix" in wanted and family in POSIX_FAMILIES:
        return True
    if family in wanted:  # osquery matches substrings: "linux,darwin" names both
        return True
    return family == "linux" and ("ubuntu" in wanted or "centos" in wanted)


@dataclass(frozen=True)
class Selection:
    """What targets ask of a node, kind by kind; an empty kind asks nothing.

    AND across kinds, any within one kind. `platforms` holds families or platform names
    (platform_selected); `nodes` node ids.
    """

    tags: frozenset[str] = frozenset()
    platforms: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        tags: Iterable[str] = (),
        platforms: Iterable[str] = (),
        labels: Iterable[str] = (),
        nodes: Iterable[str] = (),
    ) -> Selection:
        return cls(frozenset(tags), frozenset(platforms), frozenset(labels), frozenset(nodes))

    @classmethod
    def of_targets(cls, targets: Targets) -> Selection:
        """A config block's targets (`all: true` asks nothing of its own)."""
        return cls.of(targets.tags, targets.platforms, targets.labels, targets.nodes)

    def matches(
        self,
        platform: str,
        tags: frozenset[str],
        labels: frozenset[str] = frozenset(),
        node_id: str = "",
    ) -> bool:
        """Whether a node (its os_version.platform or family, every tag it has, its
        labels, its id) is selected."""
        return (
            (not self.nodes or node_id in self.nodes)
            and (not self.platforms or any(platform_selected(p, platform) for p in self.platforms))
            and (not self.tags or not self.tags.isdisjoint(tags))
            and (not self.labels or not self.labels.isdisjoint(labels))
        )


@dataclass(frozen=True)
class NodeFacts:
    """What targeting needs to know about one node (tags: the secret's plus node_tags)."""

    node_id: str
    platform: str
    tags: frozenset[str]
    labels: frozenset[str]


def node_tags_for(state: State, node_id: str, host_identifier: str) -> frozenset[str]:
    """Admin-set tags of a node, listed under its node id or its host identifier."""
    tags = set(state.node_tags.get(node_id, ()))
    if host_identifier:
        tags.update(state.node_tags.get(host_identifier, ()))
    return frozenset(tags)


@dataclass(frozen=True)
class NodeGroup:
    """The facts that decide a node's config: nodes with equal groups get equal bytes."""

    family: str
    tags: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    node_id: str = ""

    def describe(self) -> str:
        """A short name for people, e.g. "linux tags=prod,web labels=docker-hosts"."""
        if self.node_id:
            return f"node {self.node_id}"
        words = [self.family or "unknown-platform"]
        if self.tags:
            words.append("tags=" + ",".join(sorted(self.tags)))
        if self.labels:
            words.append("labels=" + ",".join(sorted(self.labels)))
        return " ".join(words)


def group_of(state: State, facts: NodeFacts) -> NodeGroup:
    """The node's group: only the tags, labels and node id that some block targets are kept."""
    node_id = facts.node_id if facts.node_id in state.targeted_nodes else ""
    return NodeGroup(
        family=platform_family(facts.platform),
        tags=facts.tags & state.targeted_tags,
        labels=facts.labels & state.targeted_labels,
        node_id=node_id,
    )


def block_applies(block: Block, group: NodeGroup) -> bool:
    """Every kind the block targets matches the group (AND), any target within a kind.

    A group keeps only the tags, labels and node id some block targets, which is all a
    block can ask about, so the answer is the same for every node of the group.
    """
    return Selection.of_targets(block.targets).matches(
        group.family, group.tags, group.labels, group.node_id
    )


def combined_kinds(targets: Targets) -> list[str]:
    """The kinds a block's targets combine (two or more: they must all match)."""
    kinds = ["all"] if targets.all else []
    kinds += [kind for kind in ("platforms", "tags", "labels", "nodes") if getattr(targets, kind)]
    return kinds


def specificity(block: Block) -> int:
    """How specific a block's most specific target is: node 4, label 3, tag 2, platform 1, all 0."""
    targets = block.targets
    for rank, kind in ((4, targets.nodes), (3, targets.labels), (2, targets.tags)):
        if kind:
            return rank
    return 1 if targets.platforms else 0
