"""Checks a state the way osquery (≤ 5.23.1, TLS config plugin) would accept its configs.

osquery silently skips much of what it dislikes (a query without SQL, an interval out
of range, a reserved query name) and refuses a whole config for a few things (too
big, too deep, an `error` key). Both are mistakes an operator wants to hear about at
once, so every one of them is refused at apply time with the reason, all of them in one
answer (not only the first). What osquery merely ignores without harm (an unknown
top-level key, a CLI-only flag) and a block whose targets combine kinds (they meant OR
in earlier Quarry versions, AND now) are warnings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from osquery_config.detections import InvalidDetection, check_detection
from osquery_config.state import Block, InvalidState, Label, State
from osquery_config.targeting import FAMILIES, combined_kinds

# osquery ≤ 5.23.1 refuses configs above 1 MiB (4 MiB at HEAD); we hold the older line.
MAX_CONFIG_BYTES = 1024 * 1024
# osquery refuses a document nested this deep or deeper (the root object is level 1).
MAX_DEPTH = 32
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 604_800
# osquery's reserved database prefixes and suffixes (osquery/database/database.cpp).
RESERVED_PREFIXES = ("query.", "cache.", "config_views.")
RESERVED_SUFFIXES = ("epoch", "counter")
# The TLS helper reads these in any response: `error` fails the fetch, `node_invalid` re-enrolls.
RESERVED_TOP_LEVEL = ("error", "node_invalid")
# Top-level keys some osquery parser reads, with the JSON type it needs.
KNOWN_KEYS: dict[str, type] = {
    "options": dict, "schedule": dict, "packs": dict, "decorators": dict, "file_paths": dict,
    "file_paths_query": dict, "exclude_paths": dict, "file_accesses": list, "yara": dict,
    "events": dict, "auto_table_construction": dict, "views": dict, "feature_vectors": dict,
    "kafka_topics": dict, "prometheus_targets": dict, "logger": dict,
}  # fmt: skip
# Flags osquery parses as unsigned integers: a string or bool there is a typo, not a value.
INTEGER_FLAGS = frozenset(
    {
        "distributed_interval", "distributed_tls_max_attempts", "distributed_denylist_duration",
        "logger_tls_period", "logger_tls_max_lines", "logger_tls_max_linesize", "logger_tls_max",
        "logger_tls_backoff_max", "buffered_log_max", "schedule_epoch", "schedule_splay_percent",
        "schedule_default_interval", "pack_refresh_interval", "config_refresh",
        "config_tls_refresh", "config_accelerated_refresh", "config_tls_accelerated_refresh",
        "config_tls_max_attempts", "watchdog_memory_limit", "watchdog_utilization_limit",
        "watchdog_delay", "worker_threads", "table_delay", "events_expiry", "events_max",
    }
)  # fmt: skip
# Flags osquery only reads from its command line; in a config they are ignored with a warning.
CLI_ONLY_FLAGS = frozenset(
    {
        "tls_hostname", "tls_server_certs", "tls_client_cert", "tls_client_key",
        "tls_session_reuse", "tls_session_timeout", "tls_accept_gzip", "proxy_hostname",
        "enroll_tls_endpoint", "tls_enroll_max_attempts", "tls_enroll_max_interval",
        "enroll_secret_path", "enroll_secret_env", "enroll_always", "disable_enrollment",
        "disable_reenrollment", "config_plugin", "config_tls_endpoint", "config_tls_max_attempts",
        "config_refresh", "config_tls_refresh", "config_accelerated_refresh",
        "config_tls_accelerated_refresh", "config_enable_backup", "logger_plugin",
        "disable_carver", "carver_start_endpoint", "carver_continue_endpoint",
        "carver_block_size", "carver_compression", "carver_expiry", "carver_disable_function",
    }
)  # fmt: skip


def validate_state(state: State, origins: Mapping[tuple[str, str], str] | None = None) -> list[str]:
    """Raise InvalidState naming every problem (what osquery would skip or fail on), each
    with its block or label, and its file when `origins` ((section, name) -> file name)
    is given; return the warnings."""
    origins = origins or {}

    def where(section: str, name: str) -> str:
        origin = origins.get((section, name))
        return f"{origin}: " if origin else ""

    known_labels = {label.name for label in state.labels}
    problems: list[str] = []
    warnings: list[str] = []
    for label in state.labels:
        _collect(problems, where("labels", label.name), lambda label=label: _check_label(label))
    for block in state.blocks:
        prefix = f"{where('blocks', block.name)}block {block.name!r}: "
        block_problems, block_warnings = _check_block(block, known_labels)
        problems.extend(prefix + problem for problem in block_problems)
        warnings.extend(where("blocks", block.name) + w for w in block_warnings)
    for node in state.node_tags:
        _collect(
            problems, where("node_tags", node), lambda node=node: _check_node_tags(node, state)
        )
    for rule in state.detections:
        try:
            check_detection(rule)
        except InvalidDetection as exc:
            problems.extend(where("detections", rule.name) + p for p in exc.problems)
    if problems:
        raise InvalidState(*problems)
    return warnings


def _collect(problems: list[str], prefix: str, check: Callable[[], object]) -> None:
    """Run one check; what it refuses joins `problems` and the checking goes on."""
    try:
        check()
    except InvalidState as exc:
        problems.extend(prefix + problem for problem in exc.problems)


def combined_targets_warnings(state: State) -> list[str]:
    """A warning for each block whose targets combine kinds: they meant OR in earlier
    Quarry versions and mean AND now (docs/config.md, "Upgrade notes")."""
    return [w for block in state.blocks for w in _combined_targets_warning(block)]


def _combined_targets_warning(block: Block) -> list[str]:
    kinds = combined_kinds(block.targets)
    if len(kinds) < 2:
        return []
    return [
        f"block {block.name!r}: targets combine {' and '.join(kinds)}: a node must match"
        " each of them (AND); earlier Quarry versions applied the block when any"
        " matched (OR)"
    ]


def _check_node_tags(node: str, state: State) -> None:
    tags = state.node_tags[node]
    if not node.strip():
        raise InvalidState("node_tags: a node id or host identifier must not be empty")
    if not all(tag.strip() for tag in tags):
        raise InvalidState(f"node_tags of {node!r}: tags must not be empty")


def check_rendered(config_json: str) -> None:
    """Raise InvalidState if osquery would refuse this rendered config as a whole."""
    if len(config_json.encode()) > MAX_CONFIG_BYTES:
        raise InvalidState(f"the config is larger than osquery's limit of {MAX_CONFIG_BYTES} bytes")
    if _depth(parse_config_json(config_json)) >= MAX_DEPTH:
        raise InvalidState(f"the config is nested {MAX_DEPTH} levels deep or more")


def parse_config_json(config_json: str) -> dict:
    """A plain osquery config (what `quarry config set` takes) as an object; raises InvalidState."""

    def refuse_constant(name: str) -> object:
        raise InvalidState(f"{name} is not valid JSON")

    try:
        config = json.loads(config_json, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidState(f"the config is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidState(f"the config is nested {MAX_DEPTH} levels deep or more") from None
    if not isinstance(config, dict):
        raise InvalidState("the config must be a JSON object")
    return config


def _depth(value: object) -> int:
    """Nesting levels of objects and arrays, without recursion (input may be deep)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def _check_label(label: Label) -> None:
    if not label.query.strip():
        raise InvalidState(f"label {label.name!r} needs a non-empty string 'query'")
    if not MIN_INTERVAL_S <= label.interval <= MAX_INTERVAL_S:
        raise InvalidState(
            f"label {label.name!r}: interval {label.interval} is outside"
            f" {MIN_INTERVAL_S}..{MAX_INTERVAL_S} seconds"
        )
    _check_platforms(f"label {label.name!r}", label.platforms)


def _check_block(block: Block, known_labels: set[str]) -> tuple[list[str], list[str]]:
    """The block's problems (each check on its own, so every one is reported) and
    warnings, without the block's name; validate_state adds it."""
    problems: list[str] = []
    warnings: list[str] = []
    config = block.config
    _collect(problems, "", lambda: _check_targets(block, known_labels))
    warnings.extend(_combined_targets_warning(block))
    for key in RESERVED_TOP_LEVEL:
        if key in config:
            problems.append(f"top-level key {key!r} is reserved by osquery's TLS protocol")
    if _depth(config) >= MAX_DEPTH:
        problems.append(f"the config is nested {MAX_DEPTH} levels deep or more")
        return problems, warnings
    well_typed = set()
    for key, value in config.items():
        expected = KNOWN_KEYS.get(key)
        if expected is None:
            warnings.append(f"block {block.name!r}: unknown key {key!r} (osquery ignores it)")
        elif not isinstance(value, expected):
            kind = "an object" if expected is dict else "a list"
            problems.append(f"{key!r} must be {kind}; osquery ignores it otherwise")
        else:
            well_typed.add(key)
    if "options" in well_typed:
        options = config["options"]
        for name in options:
            _collect(problems, "", lambda name=name: _check_option_value(name, options[name]))
        warnings.extend(f"block {block.name!r}: {w}" for w in _cli_only_warnings(options))
    if "schedule" in well_typed:
        for name, query in config["schedule"].items():
            _collect(problems, "", lambda n=name, q=query: _check_query("schedule", n, q, n))
    if "packs" in well_typed:
        for name, pack in config["packs"].items():
            _collect(problems, "", lambda n=name, p=pack: _check_pack(n, p))
    if "decorators" in well_typed:
        _collect(problems, "", lambda: _check_decorators(config["decorators"]))
    return problems, warnings


def _check_targets(block: Block, known_labels: set[str]) -> None:
    targets = block.targets
    if targets.is_empty():
        raise InvalidState(
            "has no targets (set all: true, or some tags, platforms, nodes or labels)"
        )
    for label in targets.labels:
        if label not in known_labels:
            raise InvalidState(f"targets unknown label {label!r}")
    _check_platforms("targets", targets.platforms)


def _check_platforms(where: str, platforms: tuple[str, ...]) -> None:
    for platform in platforms:
        if platform not in FAMILIES:
            raise InvalidState(
                f"{where}: unknown platform {platform!r} (use {', '.join(FAMILIES)})"
            )


def _cli_only_warnings(options: dict) -> list[str]:
    return [
        f"option {name!r} is command-line only (osquery ignores it here)"
        for name in options
        if name in CLI_ONLY_FLAGS
    ]


def _check_option_value(name: str, value: object) -> None:
    if value is None:
        raise InvalidState(f"option {name!r} is null; osquery skips it")
    if isinstance(value, float):
        raise InvalidState(
            f"option {name!r} is a float ({value}); osquery misreads floats,"
            " use a whole number or a string"
        )
    if name in INTEGER_FLAGS and (
        isinstance(value, bool) or not isinstance(value, int) or value < 0
    ):
        raise InvalidState(f"option {name!r} must be a whole number of 0 or more, not {value!r}")


def _check_pack(pack_name: str, pack: object) -> None:
    if isinstance(pack, str):
        raise InvalidState(
            f"pack {pack_name!r} is a string; osquery's TLS config plugin ignores"
            " string-valued packs, inline the pack as an object"
        )
    if not isinstance(pack, dict):
        raise InvalidState(f"pack {pack_name!r} must be an object")
    discovery = pack.get("discovery", [])
    if not isinstance(discovery, list) or not all(isinstance(q, str) for q in discovery):
        raise InvalidState(f"pack {pack_name!r}: 'discovery' must be a list of SQL strings")
    queries = pack.get("queries")
    if queries is None:
        return
    where = f"pack {pack_name!r}"
    if not isinstance(queries, dict):
        raise InvalidState(f"{where} queries must be an object of query names to queries")
    problems: list[str] = []
    for name, query in queries.items():
        # osquery names pack queries pack_<pack>_<query> (default --pack_delimiter).
        stored = f"pack_{pack_name}_{name}"
        _collect(problems, "", lambda n=name, q=query, s=stored: _check_query(where, n, q, s))
    if problems:
        raise InvalidState(*problems)


def _check_query(where: str, name: str, query: object, stored_name: str) -> None:
    _check_query_name(where, name, stored_name)
    if not isinstance(query, dict):
        raise InvalidState(f"{where} query {name!r} must be an object")
    if not isinstance(query.get("query"), str) or not query["query"].strip():
        raise InvalidState(f"{where} query {name!r} needs a non-empty string 'query'")
    if "interval" in query:
        _check_interval(where, name, query["interval"])


def _check_query_name(where: str, name: str, stored_name: str) -> None:
    if stored_name.startswith(RESERVED_PREFIXES) or stored_name.endswith(RESERVED_SUFFIXES):
        raise InvalidState(
            f"{where} query name {name!r} is reserved by osquery (names may not start with"
            " 'query.', 'cache.' or 'config_views.', nor end with 'epoch' or 'counter')"
        )


def _check_interval(where: str, name: str, interval: object) -> None:
    # osquery takes a number or a numeric string; a bool or a float is a mistake.
    if isinstance(interval, str) and interval.strip().isdigit():
        interval = int(interval)
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise InvalidState(f"{where} query {name!r}: 'interval' must be a whole number")
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise InvalidState(
            f"{where} query {name!r}: interval {interval} is outside"
            f" {MIN_INTERVAL_S}..{MAX_INTERVAL_S} seconds"
        )


def _check_decorators(decorators: object) -> None:
    if decorators is None:
        return
    for when in ("load", "always"):
        queries = decorators.get(when, [])
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise InvalidState(f"decorators.{when} must be a list of SQL strings")
    intervals = decorators.get("interval", {})
    if not isinstance(intervals, dict):
        raise InvalidState("decorators.interval must be an object of seconds to SQL lists")
    for seconds, queries in intervals.items():
        if not seconds.isdigit() or int(seconds) % 60 != 0 or int(seconds) == 0:
            raise InvalidState(
                f"decorator interval {seconds!r} is not a multiple of 60 seconds (osquery skips it)"
            )
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise InvalidState(f"decorators.interval.{seconds} must be a list of SQL strings")
