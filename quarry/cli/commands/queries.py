"""`quarry query run|show|list|cancel`: live query campaigns and their per-host account.

`run` starts a campaign and follows it over DistributedService.WatchCampaign (a
server stream) until every targeted host is accounted for, the campaign closes, or
--timeout passes; then it prints the account. With --watch it also prints each host's
state change and progress (answered/targeted) as they arrive, and each answering host's
rows, read from ClickHouse (quarry.distributed_results, through the log store) as soon as
the host is reported answered: rows are stored before the answer is recorded. --rows
adds every row to the final account instead. With --json it writes JSON lines as they
happen: the start, each host's state change, each row, then the account
(docs/live-queries.md, "JSON lines"). Its exit code tells whether every host answered.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator

import grpc

from protos.v1 import distributed_pb2, distributed_pb2_grpc, logs_pb2, logs_pb2_grpc
from quarry.cli.commands.admin import CommandError, call_rpc, rpc_error_line
from quarry.cli.commands.node_names import NODE_NAME_HELP, resolve_nodes
from quarry.runtime.clickhouse_sql import sql_string
from quarry.runtime.command_output import (
    emit_json,
    emit_json_line,
    emit_table,
    progress,
    proto_to_json,
    utc_iso,
)
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel

HostState = distributed_pb2.HostState
# The order states are shown in: still waiting first, then the outcomes.
STATE_ORDER = ("targeted", "offline", "delivered", "answered", "failed", "expired")

# `quarry query run` exit codes (docs/live-queries.md, "Exit codes"); 1 is any error.
EXIT_ALL_ANSWERED = 0
EXIT_SOME_ANSWERED = 3
EXIT_NONE_ANSWERED = 4

CAMPAIGN_STATUSES = ("open", "closed", "cancelled")
DEFAULT_LIST_LIMIT = 50


def positive_seconds(text: str) -> int:
    """A number of seconds of at least 1 (0 would silently mean the service's default)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (1 or more)")
    return int(text)


def limit_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 for no limit)")
    return int(text)


def add_query_commands(sub: argparse._SubParsersAction, admin: Callable) -> None:
    query = sub.add_parser("query", help="live queries")
    query_sub = query.add_subparsers(dest="query_command", required=True, metavar="ACTION")
    cmd = admin(query_sub, "run", "run SQL on nodes now; follow and print their answers", query_run)
    cmd.add_argument("sql")
    targets = cmd.add_argument_group("targets (AND across kinds, any within one; default: all)")
    targets.add_argument("--all", action="store_true", help="every node (the default)")
    targets.add_argument(
        "--node", action="append", help=f"this node: {NODE_NAME_HELP} (repeatable)"
    )
    targets.add_argument("--tag", action="append", help="nodes with this enroll-secret tag")
    targets.add_argument(
        "--platform",
        action="append",
        help="nodes of this family (linux, darwin, windows, freebsd) or os name (ubuntu, rhel)",
    )
    targets.add_argument("--label", action="append", help="nodes in this dynamic label")
    targets.add_argument(
        "--percent", type=float, default=0.0, help="a stable share (0-100) of the selected nodes"
    )
    targets.add_argument("--min-version", default="", help="osquery version at least, e.g. 5.12.0")
    cmd.add_argument(
        "--discovery", default="", help="osquery discovery SQL: nodes where it finds no row skip"
    )
    cmd.add_argument(
        "--ttl",
        "--window",
        dest="ttl",
        type=positive_seconds,
        default=0,
        help="seconds during which nodes checking in still get it (default 1 h)",
    )
    cmd.add_argument(
        "--offline-after",
        type=positive_seconds,
        default=0,
        help="a node unseen this many seconds before launch is offline (default 120)",
    )
    cmd.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to follow it before printing"
    )
    cmd.add_argument("--watch", action="store_true", help="print host states as they change")
    cmd.add_argument("--rows", action="store_true", help="print the rows at the end")
    cmd.add_argument("--author", default=os.environ.get("USER", ""))
    cmd.epilog = (
        "--json writes JSON lines as hosts answer (docs/live-queries.md). Exit code: 0 every"
        f" targeted host answered, {EXIT_SOME_ANSWERED} some did not (failed, offline, expired,"
        f" or no answer by --timeout), {EXIT_NONE_ANSWERED} none answered, 1 an error."
    )
    cmd = admin(query_sub, "show", "the per-host account of a live query", query_show)
    cmd.add_argument("id")
    cmd = admin(query_sub, "list", "live queries, newest first", query_list)
    cmd.add_argument("--status", choices=CAMPAIGN_STATUSES, help="only open, closed or cancelled")
    cmd.add_argument("--author", default="", help="only live queries started by this author")
    cmd.add_argument(
        "--include-labels",
        action="store_true",
        help="also the live queries that evaluate dynamic labels (author 'label NAME')",
    )
    cmd.add_argument(
        "--limit",
        type=limit_count,
        default=DEFAULT_LIST_LIMIT,
        help=f"at most this many, the newest (default {DEFAULT_LIST_LIMIT}; 0: all)",
    )
    cmd = admin(query_sub, "cancel", "stop handing a live query out", query_cancel)
    cmd.add_argument("id")


def _stub(settings: Settings) -> distributed_pb2_grpc.DistributedServiceStub:
    return distributed_pb2_grpc.DistributedServiceStub(
        sync_channel(settings.service_addr("distributed"))
    )


def query_run(settings: Settings, args: argparse.Namespace) -> int:
    stub = _stub(settings)
    campaign = call_rpc(stub.StartQuery, start_request(settings, args))
    progress(f"live query {campaign.campaign_id} started for {campaign.targeted} hosts")
    if args.json:
        emit_json_line({"type": "started", "campaign": campaign})
    for update in follow(stub, campaign.campaign_id, args.timeout, hosts=args.watch or args.json):
        if args.watch:
            show_progress(update)
        if args.json:
            emit_update_lines(settings, campaign.campaign_id, update)
        elif args.watch:
            print_new_rows(settings, campaign.campaign_id, update)
    report = call_rpc(
        stub.GetCampaign, distributed_pb2.GetCampaignRequest(campaign_id=campaign.campaign_id)
    )
    if args.json:
        emit_json_line({"type": "report", **report_json(report)})
    else:
        rows = result_rows(settings, campaign.campaign_id) if args.rows else None
        print_report(report, False, rows)
    return exit_code(report)


def exit_code(report: distributed_pb2.CampaignReport) -> int:
    """0 when every targeted host answered (none targeted included), else whether some did."""
    answered = report.counts["answered"]
    if answered == sum(report.counts.values()):
        return EXIT_ALL_ANSWERED
    return EXIT_SOME_ANSWERED if answered else EXIT_NONE_ANSWERED


def start_request(
    settings: Settings, args: argparse.Namespace
) -> distributed_pb2.StartQueryRequest:
    return distributed_pb2.StartQueryRequest(
        sql=args.sql,
        node_ids=target_node_ids(settings, args.node or []),
        tags=args.tag or [],
        platforms=[p.lower() for p in args.platform or []],
        labels=args.label or [],
        percent=args.percent,
        min_osquery_version=args.min_version,
        discovery_sql=args.discovery,
        ttl_seconds=args.ttl,
        offline_after_seconds=args.offline_after,
        author=args.author,
    )


def target_node_ids(settings: Settings, names: list[str]) -> list[str]:
    """The node ids of the nodes named; a node that cannot answer (revoked, pending) is
    refused rather than left to expire in the account."""
    ids = []
    for name, node in zip(names, resolve_nodes(settings, names), strict=True):
        if node.revoked or node.pending:
            why = "revoked" if node.revoked else "pending approval"
            raise CommandError(f"node {name!r} ({node.node_id}) is {why}: it gets no live queries")
        ids.append(node.node_id)
    return ids


def follow(
    stub: distributed_pb2_grpc.DistributedServiceStub,
    campaign_id: str,
    timeout: float,
    hosts: bool,
) -> Iterator[distributed_pb2.CampaignProgress]:
    """The campaign's progress messages until it is done or `timeout` seconds pass
    (with every host's changes when `hosts`, else only the counts)."""
    request = distributed_pb2.GetCampaignRequest(campaign_id=campaign_id, counts_only=not hosts)
    stream = stub.WatchCampaign(request, timeout=timeout)
    try:
        for update in stream:
            yield update
            if update.done:
                return
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CommandError(rpc_error_line(exc)) from exc
    finally:
        stream.cancel()


def show_progress(update: distributed_pb2.CampaignProgress) -> None:
    for host in update.hosts:
        state = HostState.State.Name(host.state).lower()
        detail = f" {host.row_count} rows" if state == "answered" else ""
        detail += f" {host.message}" if host.message else ""
        progress(f"  {host.host_identifier or host.node_id}: {state}{detail}")
    counts = update.counts
    accounted = sum(counts[s] for s in ("answered", "failed", "expired", "offline"))
    progress(
        f"{update.campaign.campaign_id}: {counts['answered']} answered,"
        f" {counts['failed']} failed, {accounted}/{sum(counts.values())} accounted for"
        + (" (closed)" if update.closed else "")
    )


def emit_update_lines(
    settings: Settings, campaign_id: str, update: distributed_pb2.CampaignProgress
) -> None:
    """A "host" line per host state change, then a "row" line per row of the hosts that
    answered in it (docs/live-queries.md, "JSON lines")."""
    for host in update.hosts:
        emit_json_line({"type": "host", "campaign_id": campaign_id, **proto_to_json(host)})
        if host.state == HostState.ANSWERED and host.row_count:
            for row in result_rows(settings, campaign_id, host.host_identifier):
                emit_json_line(
                    {
                        "type": "row",
                        "campaign_id": campaign_id,
                        "node_id": host.node_id,
                        "host_identifier": row.pop("host_identifier"),
                        "row": row,
                    }
                )


def print_new_rows(
    settings: Settings, campaign_id: str, update: distributed_pb2.CampaignProgress
) -> None:
    """The rows of the hosts this update reports answered, one line per row."""
    for host in update.hosts:
        if host.state == HostState.ANSWERED and host.row_count:
            for row in result_rows(settings, campaign_id, host.host_identifier):
                name = row.pop("host_identifier")
                values = "  ".join(f"{key}={value}" for key, value in row.items())
                print(f"{name}  {values}", flush=True)


def result_rows(settings: Settings, campaign_id: str, host_identifier: str = "") -> list[dict]:
    """The campaign's rows (of one host, when given), from quarry.distributed_results."""
    stub = logs_pb2_grpc.LogStoreStub(sync_channel(settings.service_addr("ingest")))
    one_host = f" AND host_identifier = {sql_string(host_identifier)}" if host_identifier else ""
    reply = call_rpc(
        stub.Query,
        logs_pb2.SqlRequest(
            sql="SELECT host_identifier, column_names, column_values"
            f" FROM quarry.distributed_results WHERE campaign_id = {sql_string(campaign_id)}"
            f"{one_host} ORDER BY host_identifier, row_index"
        ),
    )
    if reply.error:
        raise CommandError(reply.error)
    return [
        {"host_identifier": host, **dict(zip(names, values, strict=False))}
        for host, names, values in (json.loads(r) for r in reply.rows_json)
    ]


def query_show(settings: Settings, args: argparse.Namespace) -> int:
    report = call_rpc(
        _stub(settings).GetCampaign, distributed_pb2.GetCampaignRequest(campaign_id=args.id)
    )
    if not report.found:
        raise CommandError(f"no live query {args.id}")
    print_report(report, args.json)
    return 0


def query_list(settings: Settings, args: argparse.Namespace) -> int:
    request = distributed_pb2.ListCampaignsRequest(
        include_closed=True,
        status=args.status or "",
        author=args.author,
        exclude_labels=not args.include_labels,
        limit=args.limit,
    )
    campaigns = call_rpc(_stub(settings).ListCampaigns, request).campaigns
    if args.json:
        emit_json(list(campaigns))
        return 0
    now = int(time.time())
    rows = [
        (
            c.campaign_id,
            utc_iso(c.created_at),
            c.author,
            c.targeted,
            campaign_status(c, now),
            " ".join(c.sql.split()),
        )
        for c in campaigns
    ]
    emit_table(["campaign", "started", "author", "targeted", "status", "sql"], rows)
    if args.limit and len(campaigns) == args.limit:
        print(f"(the newest {args.limit}; --limit 0 for all)")
    return 0


def campaign_status(campaign: distributed_pb2.Campaign, now: int) -> str:
    if campaign.cancelled:
        return "cancelled"
    return "open" if campaign.expires_at > now else "closed"


def query_cancel(settings: Settings, args: argparse.Namespace) -> int:
    campaign = call_rpc(
        _stub(settings).CancelCampaign, distributed_pb2.GetCampaignRequest(campaign_id=args.id)
    )
    if args.json:
        emit_json(campaign)
    else:
        print(f"cancelled {campaign.campaign_id}")
    return 0


def print_report(
    report: distributed_pb2.CampaignReport, as_json: bool, rows: list[dict] | None = None
) -> None:
    if as_json:
        document = report_json(report)
        if rows is not None:
            document["rows"] = rows
        emit_json(document)
        return
    c = report.campaign
    print(f"\nlive query {c.campaign_id}: {c.sql}")
    emit_table(
        ["host", "state", "status", "rows", "wall_ms", "message"],
        [
            (
                h.host_identifier or h.node_id,
                HostState.State.Name(h.state).lower(),
                h.status,
                h.row_count,
                h.stats.wall_time_ms,
                h.message,
            )
            for h in report.hosts
        ],
    )
    print("  ".join(f"{state} {report.counts[state]}" for state in STATE_ORDER))
    if rows is not None:
        columns = sorted({key for row in rows for key in row} - {"host_identifier"})
        emit_table(
            ["host_identifier", *columns],
            [[row["host_identifier"], *(row.get(k, "") for k in columns)] for row in rows],
        )
    else:
        print(
            'rows are in ClickHouse: quarry sql "SELECT * FROM quarry.distributed_results '
            f"WHERE campaign_id = '{c.campaign_id}'\""
        )


def report_json(report: distributed_pb2.CampaignReport) -> dict:
    """The account as JSON: the campaign, every host, the counts of every state."""
    document = proto_to_json(report)
    document["counts"] = {state: report.counts[state] for state in STATE_ORDER} | document["counts"]
    return document
