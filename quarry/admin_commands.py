"""Admin commands: each talks to one service over gRPC and prints for people or --json.

The config commands are in quarry/config_commands.py, the enrollment ones in
quarry/enrollment_commands.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from protos.v1 import (
    distributed_pb2,
    distributed_pb2_grpc,
    enroll_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from quarry.cli_output import emit_json, emit_table, progress
from quarry.grpc_runtime import sync_channel
from quarry.osquery_flags import osquery_flags
from quarry.settings import Settings

RPC_TIMEOUT_S = 30.0
HostState = distributed_pb2.HostState


class CommandError(Exception):
    """A failure to show the person as one clear line (exit code 1)."""


def _as_dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def call_rpc(method: Callable[..., Any], request: Message) -> Any:
    """One RPC; a failure becomes a one-line CommandError such as "NOT_FOUND: no node x"."""
    try:
        return method(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        details = " ".join((exc.details() or "").split())
        raise CommandError(f"{exc.code().name}: {details}") from exc


# --- sql ------------------------------------------------------------------------------


def sql(settings: Settings, args: argparse.Namespace) -> int:
    stub = logs_pb2_grpc.LogStoreStub(sync_channel(settings.service_addr("ingest")))
    reply = call_rpc(stub.Query, logs_pb2.SqlRequest(sql=args.sql))
    if reply.error:
        raise CommandError(reply.error)
    rows = [json.loads(r) for r in reply.rows_json]
    if args.json:
        emit_json([dict(zip(reply.columns, row, strict=False)) for row in rows])
    else:
        emit_table(list(reply.columns), rows)
    return 0


# --- enroll service (its commands are in quarry/enrollment_commands.py) ---------------


def enroll_stub(settings: Settings) -> enroll_pb2_grpc.EnrollServiceStub:
    return enroll_pb2_grpc.EnrollServiceStub(sync_channel(settings.service_addr("enroll")))


# --- live queries ---------------------------------------------------------------------


def _distributed_stub(settings: Settings) -> distributed_pb2_grpc.DistributedServiceStub:
    channel = sync_channel(settings.service_addr("distributed"))
    return distributed_pb2_grpc.DistributedServiceStub(channel)


def query_run(settings: Settings, args: argparse.Namespace) -> int:
    stub = _distributed_stub(settings)
    campaign = call_rpc(
        stub.StartQuery,
        distributed_pb2.StartQueryRequest(
            sql=args.sql,
            node_ids=args.node or [],
            tags=args.tag or [],
            ttl_seconds=args.ttl,
            author=args.author,
        ),
    )
    progress(f"live query {campaign.campaign_id} started")
    report = _wait_for_answers(stub, campaign.campaign_id, args.timeout)
    _print_report(report, args.json)
    return 0


def _wait_for_answers(stub, campaign_id: str, timeout: float) -> distributed_pb2.CampaignReport:
    """Poll the campaign's account until every targeted host answered or time is up."""
    deadline = time.monotonic() + timeout
    request = distributed_pb2.GetCampaignRequest(campaign_id=campaign_id)
    while True:
        report = call_rpc(stub.GetCampaign, request)
        done = sum(h.state in (HostState.ANSWERED, HostState.FAILED) for h in report.hosts)
        progress(f"{campaign_id}: {done}/{len(report.hosts)} hosts answered")
        if (report.hosts and done == len(report.hosts)) or time.monotonic() >= deadline:
            return report
        time.sleep(0.5)


def query_show(settings: Settings, args: argparse.Namespace) -> int:
    stub = _distributed_stub(settings)
    report = call_rpc(stub.GetCampaign, distributed_pb2.GetCampaignRequest(campaign_id=args.id))
    if not report.found:
        raise CommandError(f"no live query {args.id}")
    _print_report(report, args.json)
    return 0


def query_list(settings: Settings, args: argparse.Namespace) -> int:
    stub = _distributed_stub(settings)
    reply = call_rpc(stub.ListCampaigns, distributed_pb2.ListCampaignsRequest(include_closed=True))
    if args.json:
        emit_json([_as_dict(c) for c in reply.campaigns])
        return 0
    rows = [
        (c.campaign_id, _ago(c.created_at), "cancelled" if c.cancelled else "", c.sql)
        for c in reply.campaigns
    ]
    emit_table(["campaign", "started", "", "sql"], rows)
    return 0


def query_cancel(settings: Settings, args: argparse.Namespace) -> int:
    stub = _distributed_stub(settings)
    campaign = call_rpc(
        stub.CancelCampaign, distributed_pb2.GetCampaignRequest(campaign_id=args.id)
    )
    if args.json:
        emit_json(_as_dict(campaign))
    else:
        print(f"cancelled {campaign.campaign_id}")
    return 0


def _print_report(report: distributed_pb2.CampaignReport, as_json: bool) -> None:
    if as_json:
        emit_json(_as_dict(report))
        return
    c = report.campaign
    print(f"\nlive query {c.campaign_id}: {c.sql}")
    rows = [
        (
            h.host_identifier or h.node_id,
            HostState.State.Name(h.state).lower(),
            h.status,
            h.row_count,
            h.stats.wall_time_ms,
            h.message,
        )
        for h in report.hosts
    ]
    emit_table(["host", "state", "status", "rows", "wall_ms", "message"], rows)
    print(
        'rows are in ClickHouse: quarry sql "SELECT * FROM quarry.distributed_results '
        f"WHERE campaign_id = '{c.campaign_id}'\""
    )


# --- flags ----------------------------------------------------------------------------


def flags(settings: Settings, args: argparse.Namespace) -> int:
    from enroll_service.shared_secret import secret_file
    from gateway.server import tls_files

    lines = osquery_flags(settings, tls_files(settings).ca_cert, secret_file(settings))
    if args.json:
        emit_json(lines)
    else:
        print("\n".join(lines))
    return 0


def _ago(unix_time: int) -> str:
    if not unix_time:
        return "never"
    seconds = int(time.time()) - unix_time
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


# --- tls ------------------------------------------------------------------------------


def tls_client_cert(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.tls_bootstrap import issue_client_certificate

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise CommandError(f"{args.name!r}: use letters, digits, '.', '_' and '-' only")
    try:
        cert, key = issue_client_certificate(settings.path("tls"), args.name, Path(args.out_dir))
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot issue a client certificate: {exc}") from exc
    if args.json:
        emit_json({"name": args.name, "cert": str(cert), "key": str(key)})
    else:
        print(f"certificate {cert}\nkey         {key}")
        print(f"osquery: --tls_client_cert={cert} --tls_client_key={key}", file=sys.stderr)
    return 0
