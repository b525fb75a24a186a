"""The managed config state: blocks of osquery config with targets, labels and admin tags.

This is what `quarry config apply` takes and what config_service stores as a version. It
parses from YAML or JSON files and serializes to one canonical JSON text, so equal states
give equal bytes and `export` then `apply` changes nothing. Meaning (validation,
composition) lives in the sibling modules; here is only shape.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from osquery_config.detections import Detection, InvalidDetection, parse_detection

SECTIONS = ("blocks", "labels", "node_tags", "detections")
# The key that marks a document as a partial view of the state (`quarry get queries`,
# `quarry get packs`): applied alone it would replace the whole state with that part,
# so reading one as a state file is refused (docs/config.md, "Views: quarry get").
VIEW_KEY = "view"
TARGET_KINDS = ("all", "tags", "platforms", "nodes", "labels")
STATE_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class InvalidState(ValueError):
    """The state would be refused or partly ignored by osquery: every problem found, each
    saying where and why (str() gives them one a line)."""

    def __init__(self, *problems: str) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Targets:
    """Which nodes a block applies to: any match of any kind (OR across kinds)."""

    all: bool = False
    tags: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Callers may pass lists; tuples keep equality (and hashing) independent of that.
        for kind in TARGET_KINDS[1:]:
            object.__setattr__(self, kind, tuple(getattr(self, kind)))

    def is_empty(self) -> bool:
        return not (self.all or self.tags or self.platforms or self.nodes or self.labels)

    def to_document(self) -> dict[str, object]:
        document: dict[str, object] = {"all": True} if self.all else {}
        for kind in TARGET_KINDS[1:]:
            if getattr(self, kind):
                document[kind] = list(getattr(self, kind))
        return document


@dataclass(frozen=True)
class Block:
    """A fragment of osquery config (its own top-level keys) and the nodes it targets."""

    name: str
    targets: Targets
    config: dict

    def __post_init__(self) -> None:
        # Canonical key order here means composition never has to sort inside a query.
        config = _canonical(self.config, f"block {self.name!r}")
        if not isinstance(config, dict):
            raise InvalidState(f"block {self.name!r}: 'config' must be an object")
        object.__setattr__(self, "config", config)


@dataclass(frozen=True)
class Label:
    """A dynamic label: SQL that nodes run on an interval; answering rows means membership."""

    name: str
    query: str
    interval: int
    platforms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "platforms", tuple(self.platforms))

    def to_document(self) -> dict[str, object]:
        document: dict[str, object] = {"query": self.query, "interval": self.interval}
        if self.platforms:
            document["platforms"] = list(self.platforms)
        return document


@dataclass(frozen=True)
class State:
    """The whole managed state; blocks and labels are kept sorted by name."""

    blocks: tuple[Block, ...] = ()
    labels: tuple[Label, ...] = ()
    node_tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Detection rules (osquery_config/detections.py): run by the detection service, never
    # sent to osquery.
    detections: tuple[Detection, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(sorted(self.blocks, key=lambda b: b.name)))
        object.__setattr__(self, "labels", tuple(sorted(self.labels, key=lambda lb: lb.name)))
        rules = tuple(sorted(self.detections, key=lambda rule: rule.name))
        object.__setattr__(self, "detections", rules)
        node_tags = {node: tuple(tags) for node, tags in sorted(self.node_tags.items())}
        object.__setattr__(self, "node_tags", node_tags)

    @classmethod
    def single_block(cls, config: dict) -> State:
        """One block, "default", targeting every node: what `quarry config set` means."""
        return cls(blocks=(Block("default", Targets(all=True), config),))

    @classmethod
    def from_json(cls, text: str) -> State:
        return cls.from_documents([(_parse_json(text, "the state"), "the state")])

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> State:
        """Parse YAML/JSON files (a directory means its state files, sorted by name)."""
        return read_state_files(paths).state

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[object, str]]) -> State:
        """Merge parsed documents (each named for messages); a name defined twice is an error."""
        return _merge_documents(documents).state

    def to_document(self) -> dict[str, object]:
        """The state as plain data, the shape the files and the JSON share."""
        return {
            "blocks": {
                b.name: {"targets": b.targets.to_document(), "config": b.config}
                for b in self.blocks
            },
            "labels": {label.name: label.to_document() for label in self.labels},
            "node_tags": {node: list(tags) for node, tags in self.node_tags.items()},
            # Only when there are some, so a state without rules keeps the JSON (and the
            # SHA-256) it had before detections existed.
            **(
                {"detections": {rule.name: rule.to_document() for rule in self.detections}}
                if self.detections
                else {}
            ),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact): equal states give equal text."""
        return json.dumps(
            self.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )

    def export_files(self, directory: Path, replace: bool = False) -> Export:
        """Write blocks.yaml, labels.yaml, node_tags.yaml (the non-empty ones) so that
        `apply -f directory` reads back exactly this state.

        An earlier export's files of sections now empty are removed. Any other state file
        in the directory would be read beside them (a block defined twice, or an old one
        kept): it is removed with `replace`, else InvalidState names it and nothing is
        written.
        """
        own = {f"{section}.yaml" for section in SECTIONS}
        others = [p for p in _state_files_in(directory) if p.name not in own]
        if others and not replace:
            names = ", ".join(p.name for p in others)
            raise InvalidState(
                f"{directory}: `config apply` would also read {names} there; export into an"
                " empty directory, or pass --replace to remove them"
            )
        directory.mkdir(parents=True, exist_ok=True)
        written, removed = [], []
        for section, content in self.to_document().items():
            path = directory / f"{section}.yaml"
            if not content:
                if path.exists():
                    path.unlink()
                    removed.append(path)
                continue
            text = yaml.safe_dump(
                {section: content}, sort_keys=True, allow_unicode=True, default_flow_style=False
            )
            path.write_text(text, encoding="utf-8")
            written.append(path)
        for path in others:
            path.unlink()
            removed.append(path)
        return Export(written, removed)

    @cached_property
    def targeted_tags(self) -> frozenset[str]:
        return frozenset(tag for block in self.blocks for tag in block.targets.tags)

    @cached_property
    def targeted_labels(self) -> frozenset[str]:
        return frozenset(label for block in self.blocks for label in block.targets.labels)

    @cached_property
    def targeted_nodes(self) -> frozenset[str]:
        return frozenset(node for block in self.blocks for node in block.targets.nodes)


_SINGULAR = {
    "blocks": "block",
    "labels": "label",
    "node_tags": "node_tags entry",
    "detections": "detection",
}


class Export(list[Path]):
    """The files export_files wrote (the list itself), and those it removed."""

    def __init__(self, written: list[Path], removed: list[Path]) -> None:
        super().__init__(written)
        self.removed = removed


@dataclass(frozen=True)
class StateFiles:
    """A state read from files, and the file each block, label and node_tags entry is in."""

    state: State
    origins: dict[tuple[str, str], str]


def read_state_files(paths: Iterable[Path]) -> StateFiles:
    """Parse YAML/JSON files (a directory means its state files, sorted by name).

    Raises InvalidState naming every problem of every file, each with its file.
    """
    problems: list[str] = []
    documents = []
    for path in _expand(paths):
        try:
            documents.append((_read_file(path), path.name))
        except InvalidState as exc:
            problems.extend(exc.problems)
    try:
        merged = _merge_documents(documents)
    except InvalidState as exc:
        problems.extend(exc.problems)
    if problems:
        raise InvalidState(*problems)
    return merged


def _merge_documents(documents: Iterable[tuple[object, str]]) -> StateFiles:
    """Merge parsed documents; InvalidState names every problem of every entry."""
    blocks: dict[str, Block] = {}
    labels: dict[str, Label] = {}
    node_tags: dict[str, tuple[str, ...]] = {}
    detections: dict[str, Detection] = {}
    origins: dict[tuple[str, str], str] = {}
    found: list[str] = []
    for document, origin in documents:
        try:
            entries = list(_entries(document, origin))
        except InvalidState as exc:
            found.extend(exc.problems)
            continue
        for section, name, value in entries:
            if (section, name) in origins:
                first = origins[(section, name)]
                found.append(
                    f"{_SINGULAR[section]} {name!r} is defined twice ({first} and {origin})"
                )
                continue
            origins[(section, name)] = origin
            try:
                if section == "blocks":
                    blocks[name] = _parse_block(name, value, origin)
                elif section == "labels":
                    labels[name] = _parse_label(name, value, origin)
                elif section == "detections":
                    detections[name] = _parse_detection(name, value, origin)
                else:
                    node_tags[name] = _string_tuple(value, f"{origin}: node_tags of {name!r}")
            except InvalidState as exc:
                found.extend(exc.problems)
    if found:
        raise InvalidState(*found)
    state = State(
        tuple(blocks.values()), tuple(labels.values()), node_tags, tuple(detections.values())
    )
    return StateFiles(state, origins)


def _state_files_in(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in STATE_FILE_SUFFIXES)


def _expand(paths: Iterable[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = _state_files_in(path)
            if not found:
                raise InvalidState(f"{path}: no .yaml, .yml or .json files in this directory")
            files.extend(found)
        elif path.suffix.lower() in STATE_FILE_SUFFIXES:
            files.append(path)
        else:
            raise InvalidState(f"{path}: state files must end in .yaml, .yml or .json")
    return files


def _read_file(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidState(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidState(f"{path.name}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        return _parse_json(text, path.name)
    loader = _StateLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InvalidState(f"{path.name}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    _refuse_repeated(path.name, loader.repeated)
    return document


class _StateLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting each mapping key repeated in one mapping (YAML itself
    would silently keep the last value)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                self.repeated.append((key_node.start_mark.line + 1, key_node.value))
            seen.add(key)
        return super().construct_mapping(node, deep)


def _refuse_repeated(origin: str, repeated: list[tuple[int, str]]) -> None:
    if repeated:
        raise InvalidState(
            *(
                f"{origin}: line {line}: key {key!r} is repeated in one mapping"
                " (only one value would be kept)"
                for line, key in sorted(repeated)
            )
        )


def _parse_json(text: str, origin: str) -> object:
    def refuse_constant(name: str) -> object:
        raise InvalidState(f"{origin}: {name} is not valid JSON")

    repeated: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                repeated.append(key)
            seen.add(key)
        return dict(items)

    try:
        document = json.loads(text, parse_constant=refuse_constant, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise InvalidState(f"{origin}: not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidState(f"{origin}: nested too deeply") from None
    _refuse_repeated(origin, [(_line_of_repeat(text, key), key) for key in repeated])
    return document


def _line_of_repeat(text: str, key: str) -> int:
    """The line of the second `"key":` in the text (JSON's parser gives no positions)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    matches = list(pattern.finditer(text))
    at = matches[1].start() if len(matches) > 1 else (matches[0].start() if matches else 0)
    return text.count("\n", 0, at) + 1


def _entries(document: object, origin: str) -> Iterable[tuple[str, str, object]]:
    if document is None:  # an empty YAML file
        return
    if not isinstance(document, dict):
        raise InvalidState(f"{origin}: the top level must be a mapping of {', '.join(SECTIONS)}")
    if VIEW_KEY in document:
        raise InvalidState(
            f"{origin}: a `quarry get {document[VIEW_KEY]}` view, which holds only part of"
            " each block, cannot be applied (it would drop the rest of the state): apply"
            " the state files it was read from, or `quarry get blocks`"
        )
    for section, content in document.items():
        if section not in SECTIONS:
            raise InvalidState(
                f"{origin}: unknown section {section!r} (expected {', '.join(SECTIONS)})"
            )
        if content is None:
            continue
        if not isinstance(content, dict):
            raise InvalidState(f"{origin}: {section!r} must be a mapping of names")
        for name, value in content.items():
            yield section, str(name), value


def _parse_block(name: str, value: object, origin: str) -> Block:
    where = f"{origin}: block {name!r}"
    if not isinstance(value, dict):
        raise InvalidState(f"{where} must be a mapping with 'targets' and 'config'")
    unknown = sorted(set(value) - {"targets", "config"})
    if unknown:
        raise InvalidState(f"{where}: unknown field {unknown[0]!r} (expected targets, config)")
    config = value.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidState(f"{where}: 'config' must be a mapping of osquery config keys")
    targets = _parse_targets(value.get("targets"), where)
    try:
        return Block(name, targets, config)
    except InvalidState as exc:
        raise InvalidState(f"{origin}: {exc}") from None


def _parse_targets(value: object, where: str) -> Targets:
    if value is None:
        return Targets()
    if not isinstance(value, dict):
        raise InvalidState(f"{where}: 'targets' must be a mapping of {', '.join(TARGET_KINDS)}")
    unknown = sorted(set(value) - set(TARGET_KINDS))
    if unknown:
        raise InvalidState(
            f"{where}: unknown target {unknown[0]!r} (expected {', '.join(TARGET_KINDS)})"
        )
    everything = value.get("all", False)
    if not isinstance(everything, bool):
        raise InvalidState(f"{where}: 'targets.all' must be true or false")
    lists = {
        kind: _string_tuple(value.get(kind), f"{where}: targets.{kind}")
        for kind in TARGET_KINDS[1:]
    }
    return Targets(all=everything, **lists)


def _parse_label(name: str, value: object, origin: str) -> Label:
    where = f"{origin}: label {name!r}"
    if not isinstance(value, dict):
        raise InvalidState(f"{where} must be a mapping with query, interval and platforms")
    unknown = sorted(set(value) - {"query", "interval", "platforms"})
    if unknown:
        raise InvalidState(
            f"{where}: unknown field {unknown[0]!r} (expected query, interval, platforms)"
        )
    query, interval = value.get("query"), value.get("interval", 3600)
    if not isinstance(query, str):
        raise InvalidState(f"{where}: 'query' must be a string of SQL")
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise InvalidState(f"{where}: 'interval' must be a whole number of seconds")
    platforms = _string_tuple(value.get("platforms"), f"{where}: platforms")
    return Label(name, query, interval, platforms)


def _parse_detection(name: str, value: object, origin: str) -> Detection:
    try:
        return parse_detection(name, value)
    except InvalidDetection as exc:
        raise InvalidState(*(f"{origin}: {problem}" for problem in exc.problems)) from None


def _string_tuple(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidState(f"{where} must be a list of strings")
    return tuple(value)


def _canonical(value: object, where: str) -> object:
    """JSON-ready data with keys sorted at every level; YAML's integer keys become strings."""
    try:
        return _canonical_value(value, where)
    except RecursionError:
        raise InvalidState(f"{where}: the config is nested too deeply") from None


def _canonical_value(value: object, where: str) -> object:
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            # YAML reads `3600:` (a decorator interval) as an int; JSON only has string keys.
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise InvalidState(f"{where}: key {key!r} must be a string")
            items.append((str(key), _canonical_value(item, where)))
        return dict(sorted(items))
    if isinstance(value, list | tuple):
        return [_canonical_value(item, where) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidState(f"{where}: {value!r} is not a JSON number")
    if value is None or isinstance(value, str | int | float):
        return value
    # e.g. a YAML date or timestamp: osquery has no such type.
    raise InvalidState(f"{where}: {value!r} is not a JSON value (quote it to make it a string)")


# The options every node gets until a config says otherwise; `quarry flags` prints the same
# values, since a config's options override osquery's flags.
DEFAULT_OPTIONS = {"distributed_interval": 60, "logger_tls_period": 10}


def _default_config() -> dict:
    return {"options": dict(DEFAULT_OPTIONS), "schedule": {}}


# What every node gets before anything was ever applied; every component agrees on it.
DEFAULT_STATE = State.single_block(_default_config())
