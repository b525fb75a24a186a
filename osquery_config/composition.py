"""Renders the osquery config of one node group from the blocks that target it.

The rules (precedence, merging, platform filtering) are described for operators in
docs/config.md. The output is deterministic: the same state and group always give the
same bytes, because the gateway caches by them and osquery hashes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from osquery_config.state import State
from osquery_config.targeting import NodeGroup, block_applies, platform_matches, specificity

# Sections merged by their direct keys: a whole query, pack, category or table is one unit.
KEYED_SECTIONS = frozenset(
    {
        "options", "schedule", "packs", "file_paths", "file_paths_query", "exclude_paths",
        "auto_table_construction", "views", "feature_vectors", "kafka_topics",
    }
)  # fmt: skip
# Sections whose direct keys are themselves merged: by key when objects, as a union when lists.
NESTED_SECTIONS = frozenset({"yara", "events", "decorators"})
LIST_SECTIONS = frozenset({"file_accesses"})
# The order of sections in the rendered JSON; others follow, sorted.
SECTION_ORDER = (
    "options", "schedule", "packs", "decorators", "file_paths", "file_paths_query",
    "exclude_paths", "file_accesses", "yara", "events", "auto_table_construction", "views",
)  # fmt: skip


@dataclass(frozen=True)
class Composed:
    """One group's rendered config. Treat `config` as read-only: it shares the state's data."""

    config: dict
    config_json: str
    sha1: str
    blocks: tuple[str, ...]
    conflicts: tuple[str, ...]


def config_hash(config_json: str) -> str:
    """osquery's hash of a config source: SHA-1 of its compact JSON text."""
    return hashlib.sha1(config_json.encode()).hexdigest()


def osquery_info_hash(sha1: str) -> str:
    """osquery_info.config_hash with one source (tls_plugin): SHA-1 of the source's hex hash."""
    return hashlib.sha1(sha1.encode()).hexdigest()


def compose(state: State, group: NodeGroup) -> Composed:
    """The config every node of `group` receives, with the blocks used and the clashes."""
    applying = sorted(
        (block for block in state.blocks if block_applies(block, group)),
        key=lambda block: (specificity(block), block.name),
    )
    merger = _Merger()
    for block in applying:
        for section, value in block.config.items():
            merger.add(section, _for_family(section, value, group.family), block.name)
    config = merger.rendered()
    config_json = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    return Composed(
        config=config,
        config_json=config_json,
        sha1=config_hash(config_json),
        blocks=tuple(block.name for block in applying),
        conflicts=tuple(merger.conflicts),
    )


def _for_family(section: str, value: object, family: str) -> object:
    """Drop the schedule queries and packs (and pack queries) meant for other platforms."""
    if not family or not isinstance(value, dict):
        return value
    if section == "schedule":
        return _queries_for_family(value, family)
    if section == "packs":
        kept = {}
        for name, pack in value.items():
            if not isinstance(pack, dict):
                kept[name] = pack
            elif platform_matches(_platform_of(pack), family):
                kept[name] = _pack_for_family(pack, family)
        return kept
    return value


def _pack_for_family(pack: dict, family: str) -> dict:
    queries = pack.get("queries")
    if not isinstance(queries, dict):
        return pack
    kept = _queries_for_family(queries, family)
    return pack if len(kept) == len(queries) else {**pack, "queries": kept}


def _queries_for_family(queries: dict, family: str) -> dict:
    return {
        name: query
        for name, query in queries.items()
        if not isinstance(query, dict) or platform_matches(_platform_of(query), family)
    }


def _platform_of(entry: dict) -> str:
    platform = entry.get("platform", "")
    return platform if isinstance(platform, str) else ""


class _Merger:
    """Accumulates blocks in ascending precedence: a later block's value wins."""

    def __init__(self) -> None:
        self.sections: dict[str, object] = {}
        # Which block set each merged key, to name both sides of a clash.
        self.setters: dict[str, str] = {}
        self.conflicts: list[str] = []

    def add(self, section: str, value: object, block: str) -> None:
        held = self.sections.get(section)
        if section in KEYED_SECTIONS and isinstance(value, dict):
            self.sections[section] = self._merge_keys(section, held, value, block)
        elif section in NESTED_SECTIONS and isinstance(value, dict):
            self.sections[section] = self._merge_nested(section, held, value, block)
        elif section in LIST_SECTIONS and isinstance(value, list) and isinstance(held, list):
            self.sections[section] = _union(held, value)
        elif isinstance(value, dict) and isinstance(held, dict):
            # Unknown object sections (warned at validation) merge like the known ones.
            self.sections[section] = self._merge_keys(section, held, value, block)
        else:
            self._set(section, held, value, block)
            self.sections[section] = value

    def _merge_keys(self, path: str, held: object, value: dict, block: str) -> dict:
        merged = dict(held) if isinstance(held, dict) else {}
        for key, item in value.items():
            self._set(f"{path}.{key}", merged.get(key), item, block)
            merged[key] = item
        return merged

    def _merge_nested(self, section: str, held: object, value: dict, block: str) -> dict:
        merged = dict(held) if isinstance(held, dict) else {}
        for key, item in value.items():
            path = f"{section}.{key}"
            current = merged.get(key)
            if isinstance(item, list) and isinstance(current, list):
                merged[key] = _union(current, item)
            elif isinstance(item, dict) and isinstance(current, dict | None):
                # decorators.interval lists, yara.signatures groups: merged one level down.
                merged[key] = self._merge_list_values(path, current, item, block)
            else:
                self._set(path, current, item, block)
                merged[key] = item
        return merged

    def _merge_list_values(self, path: str, held: dict | None, value: dict, block: str) -> dict:
        merged = dict(held) if held else {}
        for key, item in value.items():
            current = merged.get(key)
            lists = isinstance(item, list) and isinstance(current, list)
            if lists and path == "decorators.interval":
                merged[key] = _union(current, item)
            else:
                self._set(f"{path}.{key}", current, item, block)
                merged[key] = item
        return merged

    def _set(self, path: str, held: object, value: object, block: str) -> None:
        loser = self.setters.get(path)
        if loser is not None and held != value:
            self.conflicts.append(f"{path}: block {block!r} overrides {loser!r}")
        self.setters[path] = block

    def rendered(self) -> dict:
        config = {}
        for section in SECTION_ORDER:
            if section in self.sections:
                config[section] = _sorted(self.sections[section])
        for section in sorted(self.sections.keys() - set(SECTION_ORDER)):
            config[section] = _sorted(self.sections[section])
        return config


def _union(first: list, second: list) -> list:
    """Items of both lists in order, each once (unhashable items compared by value)."""
    merged = list(first)
    for item in second:
        if item not in merged:
            merged.append(item)
    return merged


def _sorted(value: object) -> object:
    """Keys in order down two levels (blocks are canonical below that, see Block)."""
    if not isinstance(value, dict):
        return value
    return {key: _sorted_one(value[key]) for key in sorted(value)}


def _sorted_one(value: object) -> object:
    if not isinstance(value, dict):
        return value
    return {key: value[key] for key in sorted(value)}
