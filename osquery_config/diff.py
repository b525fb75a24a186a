"""What a state change does to each node group's config, as unified diffs for people.

`quarry config apply --dry-run` shows these before anything goes live, and the diff of the
detection rules, which no node's config holds (docs/detections.md).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable

import yaml

from osquery_config.composition import compose
from osquery_config.state import State
from osquery_config.targeting import NodeGroup

# The name the detection rules' diff goes by among the node groups' diffs.
DETECTIONS_GROUP = "detection rules"


def diff_states(old: State, new: State, groups: Iterable[NodeGroup]) -> list[tuple[NodeGroup, str]]:
    """The unified diff of each group's rendered config, old -> new, for changed groups only."""
    changed = []
    for group in dict.fromkeys(groups):  # once each, in the order given
        before = pretty_config(compose(old, group).config)
        after = pretty_config(compose(new, group).config)
        if before != after:
            changed.append((group, _unified(before, after, group.describe())))
    return changed


def diff_detections(old: State, new: State) -> str:
    """The unified diff of the detection rules as the state files write them (YAML, SQL on
    its own lines), old -> new ("" when they are the same)."""
    before, after = (
        yaml.dump(
            {rule.name: rule.to_document() for rule in state.detections},
            Dumper=_BlockStrings,
            sort_keys=True,
            allow_unicode=True,
        )
        for state in (old, new)
    )
    return _unified(before, after, DETECTIONS_GROUP) if before != after else ""


class _BlockStrings(yaml.SafeDumper):
    """Multi-line strings (a rule's SQL) as YAML block literals, one line of SQL a line."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockStrings.add_representer(str, _string)


def pretty_config(config: dict) -> str:
    """A rendered config laid out for reading and diffing (indented, keys sorted)."""
    return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _unified(before: str, after: str, group_name: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"live: {group_name}",
        tofile=f"new: {group_name}",
    )
    return "".join(lines)
