"""Host inventory in the CLI: `quarry software list|hosts`, and the vitals `quarry node show`
and `quarry node list --os-version/--stale` read (docs/inventory.md).

Everything here is read from ClickHouse through the ingest service's LogStore.Query, as
`quarry sql` does: the views over the scheduled host queries' answers (ingest_service's
schema, documented in docs/analysts.md). Times are selected as unix seconds, the CLI's
JSON convention.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.cli.commands.admin import CommandError, call_rpc
from quarry.runtime.clickhouse_sql import sql_string
from quarry.runtime.command_output import emit_json, emit_table, utc_iso
from quarry.runtime.settings import Settings
from quarry.runtime.sql_text import error_line
from quarry.serving.grpc_runtime import sync_channel

AddCommand = Callable[..., argparse.ArgumentParser]
# A host is stale once its latest vitals answer is older than this many cadence periods.
STALE_PERIODS = 2


def log_store_rows(settings: Settings, sql: str) -> list[dict]:
    """The rows of one query to the log store, as column -> value dicts."""
    stub = logs_pb2_grpc.LogStoreStub(sync_channel(settings.service_addr("ingest")))
    reply = call_rpc(stub.Query, logs_pb2.SqlRequest(sql=sql))
    if reply.error:
        raise CommandError(error_line(reply.error))
    columns = list(reply.columns)
    return [dict(zip(columns, json.loads(row), strict=False)) for row in reply.rows_json]


def age_text(seconds: float) -> str:
    """How long ago, for people: 42s, 17m, 5h, 3d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- vitals, for `quarry node show` and `quarry node list` ------------------------------


def node_vitals(settings: Settings, node_id: str) -> dict[str, dict]:
    """Query name -> {collected_at, age_s, rows} of the node's latest vitals answers."""
    rows = log_store_rows(
        settings,
        "SELECT query_name, toUInt32(collected_at) AS collected_at, column_names, column_values"
        f" FROM quarry.host_vitals_latest WHERE node_id = {sql_string(node_id)}"
        " ORDER BY query_name, row_index",
    )
    now = time.time()
    vitals: dict[str, dict] = {}
    for row in rows:
        entry = vitals.setdefault(
            row["query_name"],
            {"collected_at": row["collected_at"], "age_s": int(now - row["collected_at"]),
             "rows": []},
        )  # fmt: skip
        entry["rows"].append(dict(zip(row["column_names"], row["column_values"], strict=False)))
    return vitals


def vitals_lines(vitals: dict[str, dict]) -> list[tuple[str, str]]:
    """One line per vitals row for `node show`: `query (age): key=value ...`."""
    if not vitals:
        return [("vitals", "none yet (a host answers within one vitals period: docs/inventory.md)")]
    lines = []
    for query, entry in vitals.items():
        label = f"  {query} ({age_text(entry['age_s'])} ago)"
        for row in entry["rows"] or [{}]:
            lines.append((label, " ".join(f"{k}={v}" for k, v in row.items()) or "(no rows)"))
    newest = min(entry["age_s"] for entry in vitals.values())
    return [("vitals", f"collected {age_text(newest)} ago"), *lines]


def fleet_vitals(settings: Settings) -> dict[str, dict]:
    """Node id -> {os_name, os_version, last_answer_at} of every node that answered vitals
    (two queries, merged here: 18.16's joins are not worth their quirks for this)."""
    fresh = log_store_rows(
        settings,
        "SELECT node_id, toUInt32(last_answer_at) AS last_answer_at"
        " FROM quarry.host_query_freshness WHERE group_name = 'vitals'",
    )
    systems = {
        row["node_id"]: row
        for row in log_store_rows(
            settings, "SELECT node_id, os_name, os_version FROM quarry.host_vitals"
        )
    }
    return {
        row["node_id"]: {"os_name": "", "os_version": ""} | systems.get(row["node_id"], {}) | row
        for row in fresh
    }


def stale_after(settings: Settings, args: argparse.Namespace) -> int:
    """Seconds without a vitals answer after which a node is stale."""
    if args.stale_after is not None:
        return args.stale_after
    return STALE_PERIODS * (settings.host_vitals_interval_s or 3600)


def matches_vitals(
    vitals: dict | None, os_version: str | None, stale: int | None, now: float
) -> bool:
    """Whether a node's vitals pass `--os-version` (contained in name and version) and
    `--stale` (no answer for `stale` seconds, or none at all)."""
    if os_version is not None:
        text = f"{vitals['os_name']} {vitals['os_version']}" if vitals else ""
        if os_version.lower() not in text.lower():
            return False
    if stale is not None:
        return vitals is None or now - vitals["last_answer_at"] > stale
    return True


# --- software ---------------------------------------------------------------------------


def add_software_commands(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry software list|hosts`: the fleet's software inventory."""
    software = sub.add_parser(
        "software", help="the software inventory: packages seen on the fleet's hosts"
    )
    actions = software.add_subparsers(dest="software_command", required=True, metavar="ACTION")
    cmd = add(actions, "list", "package versions across the fleet, with how many hosts", sw_list)
    cmd.add_argument("--name", metavar="TEXT", help="only packages whose name contains TEXT")
    cmd.add_argument(
        "--source",
        help="only this package table (deb_packages, rpm_packages, programs, apps,"
        " homebrew_packages, python_packages, chrome_extensions)",
    )
    cmd.add_argument(
        "--seen-within",
        type=int,
        metavar="SECONDS",
        help="only versions some host listed in this many seconds (default: any time)",
    )
    cmd = add(actions, "hosts", "the hosts that have a package (and version)", sw_hosts)
    cmd.add_argument("name", help="the package's exact name, e.g. openssl")
    cmd.add_argument("--version", help="only this exact version, e.g. 3.0.2-0ubuntu1.15")


def sw_list(settings: Settings, args: argparse.Namespace) -> int:
    where = []
    if args.name:
        where.append(f"positionCaseInsensitive(name, {sql_string(args.name)}) > 0")
    if args.source:
        where.append(f"source = {sql_string(args.source)}")
    having = f" HAVING max(last_seen) > now() - {args.seen_within}" if args.seen_within else ""
    rows = log_store_rows(
        settings,
        "SELECT name, version, source, uniqExact(node_id) AS hosts,"
        " toUInt32(min(first_seen)) AS first_seen_at, toUInt32(max(last_seen)) AS last_seen_at"
        f" FROM quarry.software{' WHERE ' + ' AND '.join(where) if where else ''}"
        f" GROUP BY name, version, source{having} ORDER BY name, version, source",
    )
    if args.json:
        emit_json(rows)
        return 0
    table = [
        (r["name"], r["version"], r["source"], r["hosts"], utc_iso(r["first_seen_at"]),
         utc_iso(r["last_seen_at"]))
        for r in rows
    ]  # fmt: skip
    emit_table(["name", "version", "source", "hosts", "first_seen", "last_seen"], table)
    return 0


def sw_hosts(settings: Settings, args: argparse.Namespace) -> int:
    version = f" AND version = {sql_string(args.version)}" if args.version else ""
    rows = log_store_rows(
        settings,
        "SELECT host_identifier, node_id, source, name, version,"
        " toUInt32(first_seen) AS first_seen_at, toUInt32(last_seen) AS last_seen_at"
        f" FROM quarry.software WHERE name = {sql_string(args.name)}{version}"
        " ORDER BY host_identifier, version",
    )
    if args.json:
        emit_json(rows)
        return 0
    table = [
        (r["host_identifier"], r["node_id"], r["source"], r["version"],
         utc_iso(r["first_seen_at"]), utc_iso(r["last_seen_at"]))
        for r in rows
    ]  # fmt: skip
    emit_table(
        ["host_identifier", "node_id", "source", "version", "first_seen", "last_seen"], table
    )
    return 0
