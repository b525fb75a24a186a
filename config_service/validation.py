"""Checks a config the way osquery (≤ 5.23.1, TLS config plugin) would accept it.

osquery silently skips much of what it dislikes (a query without SQL, an interval out
of range, a reserved query name) and refuses a whole config for a few things (too
big, too deep, an `error` key). Both are mistakes an operator wants to hear about at
once, so every one of them is refused here with the reason.
"""

from __future__ import annotations

import json

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


class InvalidConfig(ValueError):
    """The config would be refused or partly ignored by osquery; the message says why."""


def canonical_config(config_json: str) -> str:
    """The config as compact JSON, the exact bytes the gateway will send; raises InvalidConfig."""
    config = _parse(config_json)
    if not isinstance(config, dict):
        raise InvalidConfig("the config must be a JSON object")
    compact = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    if len(compact.encode()) > MAX_CONFIG_BYTES:
        raise InvalidConfig(
            f"the config is larger than osquery's limit of {MAX_CONFIG_BYTES} bytes"
        )
    if _depth(config) >= MAX_DEPTH:
        raise InvalidConfig(f"the config is nested {MAX_DEPTH} levels deep or more")
    for key in RESERVED_TOP_LEVEL:
        if key in config:
            raise InvalidConfig(f"top-level key {key!r} is reserved by osquery's TLS protocol")
    _check_options(config.get("options"))
    _check_queries("schedule", config.get("schedule"), name_prefix="")
    _check_packs(config.get("packs"))
    return compact


def _parse(config_json: str) -> object:
    def refuse_constant(name: str) -> object:
        raise InvalidConfig(f"{name} is not valid JSON")

    try:
        return json.loads(config_json, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidConfig(f"the config is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidConfig(f"the config is nested {MAX_DEPTH} levels deep or more") from None


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


def _check_options(options: object) -> None:
    if options is not None and not isinstance(options, dict):
        raise InvalidConfig("'options' must be an object of flag names to values")


def _check_packs(packs: object) -> None:
    if packs is None:
        return
    if not isinstance(packs, dict):
        raise InvalidConfig("'packs' must be an object of pack names to packs")
    for pack_name, pack in packs.items():
        if isinstance(pack, str):
            raise InvalidConfig(
                f"pack {pack_name!r} is a string; osquery's TLS config plugin ignores"
                " string-valued packs, inline the pack as an object"
            )
        if not isinstance(pack, dict):
            raise InvalidConfig(f"pack {pack_name!r} must be an object")
        # osquery names pack queries pack_<pack>_<query> (default --pack_delimiter).
        _check_queries(f"pack {pack_name!r}", pack.get("queries"), name_prefix=f"pack_{pack_name}_")


def _check_queries(where: str, queries: object, name_prefix: str) -> None:
    if queries is None:
        return
    if not isinstance(queries, dict):
        raise InvalidConfig(f"{where} queries must be an object of query names to queries")
    for name, query in queries.items():
        _check_query_name(where, name, name_prefix + name)
        if not isinstance(query, dict):
            raise InvalidConfig(f"{where} query {name!r} must be an object")
        if not isinstance(query.get("query"), str) or not query["query"].strip():
            raise InvalidConfig(f"{where} query {name!r} needs a non-empty string 'query'")
        if "interval" in query:
            _check_interval(where, name, query["interval"])


def _check_query_name(where: str, name: str, stored_name: str) -> None:
    if stored_name.startswith(RESERVED_PREFIXES) or stored_name.endswith(RESERVED_SUFFIXES):
        raise InvalidConfig(
            f"{where} query name {name!r} is reserved by osquery (names may not start with"
            " 'query.', 'cache.' or 'config_views.', nor end with 'epoch' or 'counter')"
        )


def _check_interval(where: str, name: str, interval: object) -> None:
    # osquery takes a number or a numeric string; a bool or a float is a mistake.
    if isinstance(interval, str) and interval.strip().isdigit():
        interval = int(interval)
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise InvalidConfig(f"{where} query {name!r}: 'interval' must be a whole number")
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise InvalidConfig(
            f"{where} query {name!r}: interval {interval} is outside"
            f" {MIN_INTERVAL_S}..{MAX_INTERVAL_S} seconds"
        )
