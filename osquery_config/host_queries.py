"""Scheduled host queries: named groups of osquery queries the gateway adds to a host's
distributed read when the group is due for that host (docs/inventory.md, ADR 0019).

A group has a cadence, the platform families it applies to, and per query the SQL for
each family (osquery's tables differ between Linux, macOS and Windows). The built-in
groups are `vitals` (hourly) and `software` (daily); later users of the same mechanism
(compliance policies) add their own groups.

A query goes on the wire under a name that carries its group, query and slot (the index
of the cadence period it answers): `quarry__<group>__<query>__<slot>`. It cannot collide
with a campaign id (`q_<hex>`), and the answer names the slot it answers, so a re-sent
write is recognised as the same answer and the next period's as a new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WIRE_PREFIX = "quarry__"
SEPARATOR = "__"
# Group and query names: lower-case words joined by single underscores, so `__` splits.
NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
FAMILIES = ("linux", "darwin", "windows", "freebsd")
POSIX = ("linux", "darwin", "freebsd")


@dataclass(frozen=True)
class HostQuery:
    """One query of a group: its name and its SQL per platform family (absent: not run)."""

    name: str
    sql: dict[str, str]


@dataclass(frozen=True)
class QueryGroup:
    """Queries asked of every host of `families` once per `interval_s` (0: never)."""

    name: str
    interval_s: int
    queries: tuple[HostQuery, ...]

    def __post_init__(self) -> None:
        for name in (self.name, *(query.name for query in self.queries)):
            if not NAME_PATTERN.match(name):
                raise ValueError(f"host query name {name!r}: use lower-case words joined by _")

    def sql_for(self, family: str) -> dict[str, str]:
        """Query name -> SQL for a host of this platform family (empty: none applies)."""
        return {q.name: q.sql[family] for q in self.queries if family in q.sql}


@dataclass(frozen=True)
class WireName:
    """What a scheduled query's name in a distributed read or write says."""

    group: str
    query: str
    slot: int

    def text(self) -> str:
        return f"{WIRE_PREFIX}{self.group}{SEPARATOR}{self.query}{SEPARATOR}{self.slot}"

    @property
    def path(self) -> str:
        """`<group>/<query>`: how ingest and ClickHouse name it."""
        return f"{self.group}/{self.query}"


def is_host_query(name: str) -> bool:
    return name.startswith(WIRE_PREFIX)


def parse_wire_name(name: str) -> WireName | None:
    """The group, query and slot a wire name carries; None when it is not one of ours."""
    if not is_host_query(name):
        return None
    parts = name[len(WIRE_PREFIX) :].split(SEPARATOR)
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    group, query, slot = parts
    if not (NAME_PATTERN.match(group) and NAME_PATTERN.match(query)):
        return None
    return WireName(group, query, int(slot))


def _everywhere(sql: str) -> dict[str, str]:
    return dict.fromkeys(FAMILIES, sql)


# Vitals: the documented set (docs/inventory.md#vitals). Columns are named in each query so
# that the stored rows, and the views over them, stay the same across osquery versions.
MOUNTS_SQL = (
    "SELECT path, device, type, blocks_size, blocks, blocks_free, blocks_available"
    " FROM mounts WHERE path IN ('/', '/home', '/var', '/System/Volumes/Data')"
)
VITALS_QUERIES = (
    HostQuery(
        "os_version",
        _everywhere(
            "SELECT name, version, major, minor, patch, build, platform, arch FROM os_version"
        ),
    ),
    HostQuery(
        "system_info",
        _everywhere(
            "SELECT hostname, uuid, cpu_brand, cpu_physical_cores, cpu_logical_cores,"
            " physical_memory, hardware_vendor, hardware_model, hardware_serial FROM system_info"
        ),
    ),
    HostQuery(
        "osquery_info",
        _everywhere("SELECT version, build_platform, start_time, config_hash FROM osquery_info"),
    ),
    HostQuery("uptime", _everywhere("SELECT total_seconds FROM uptime")),
    HostQuery(
        "memory",
        {
            "linux": "SELECT memory_total, memory_free, memory_available FROM memory_info",
            "darwin": "SELECT free, active, inactive, wired, page_size FROM virtual_memory_info",
            "windows": "SELECT physical_memory AS memory_total FROM system_info",
            "freebsd": "SELECT physical_memory AS memory_total FROM system_info",
        },
    ),
    HostQuery(
        "disk_space",
        {
            **dict.fromkeys(POSIX, MOUNTS_SQL),
            "windows": "SELECT device_id, type, size, free_space, file_system FROM logical_drives",
        },
    ),
    HostQuery(
        "interface_addresses",
        _everywhere("SELECT interface, address, mask, type FROM interface_addresses"),
    ),
    HostQuery(
        "interface_details",
        _everywhere("SELECT interface, mac, type, mtu FROM interface_details"),
    ),
    HostQuery(
        "logged_in_users",
        _everywhere("SELECT user, tty, host, time, type FROM logged_in_users"),
    ),
)


# Software: one query per package table, each giving name, version and detail, so the
# inventory is one table whatever the platform; the query's name is the package's source
# (docs/inventory.md#software).
def _packages(
    table: str, families: tuple[str, ...], detail: str, version: str = "version", source: str = ""
) -> HostQuery:
    sql = f"SELECT name, {version} AS version, {detail} AS detail FROM {source or table}"
    return HostQuery(table, dict.fromkeys(families, sql))


SOFTWARE_QUERIES = (
    _packages("deb_packages", ("linux",), "arch"),
    _packages("rpm_packages", ("linux",), "arch"),
    _packages("programs", ("windows",), "publisher"),
    _packages("apps", ("darwin",), "bundle_identifier", version="bundle_short_version"),
    _packages("homebrew_packages", ("darwin",), "prefix"),
    _packages("python_packages", FAMILIES, "path"),
    # A user table: osquery lists a user's extensions when joined with users.
    _packages(
        "chrome_extensions",
        ("linux", "darwin", "windows"),
        "identifier",
        source="users CROSS JOIN chrome_extensions USING (uid)",
    ),
)

DEFAULT_VITALS_INTERVAL_S = 3600
DEFAULT_SOFTWARE_INTERVAL_S = 86400


def builtin_groups(vitals_interval_s: int, software_interval_s: int) -> tuple[QueryGroup, ...]:
    """The groups Quarry ships, at the configured cadences; a group at 0 is left out."""
    groups = (
        QueryGroup("vitals", vitals_interval_s, VITALS_QUERIES),
        QueryGroup("software", software_interval_s, SOFTWARE_QUERIES),
    )
    return tuple(group for group in groups if group.interval_s > 0)
