"""Admin commands: each talks to one service over gRPC and prints for people or --json.

The config commands are in quarry/cli/commands/config.py, the enrollment ones in
quarry/cli/commands/enrollment.py, the live query ones in quarry/cli/commands/queries.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from protos.v1 import (
    enroll_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from quarry.cli.osquery_flags import osquery_flags
from quarry.encryption.gateway_certificates import issue_client_certificate, tls_files
from quarry.runtime.command_output import emit_json, emit_table
from quarry.runtime.settings import Settings
from quarry.runtime.sql_text import error_line
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.directory import enroll_secret_file, gateway_tls_dir

RPC_TIMEOUT_S = 30.0


class CommandError(Exception):
    """A failure to show the person as one clear line (exit code 1)."""


def _as_dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def call_rpc(method: Callable[..., Any], request: Message) -> Any:
    """One RPC; a failure becomes a one-line CommandError such as "NOT_FOUND: no node x"."""
    try:
        return method(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise CommandError(rpc_error_line(exc)) from exc


# gRPC's text for a refused connection says it twice: "failed to connect to all addresses;
# last error: UNKNOWN: ipv4:127.0.0.1:50051: Failed to connect to remote host: Connection
# refused". The address and the reason are what a person needs.
UNREACHABLE = re.compile(
    r"failed to connect to all addresses; last error: \w+: (?:ipv[46]:)?(?P<address>\S+:\d+):"
    r" (?:Failed to connect to remote host: )?(?P<reason>.+)$"
)


def rpc_error_line(exc: grpc.RpcError) -> str:
    """One line for a failed call; an unreachable service gets the likely reasons."""
    details = " ".join((exc.details() or "").split())
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return f"{exc.code().name}: {details}"
    unreachable = UNREACHABLE.match(details)
    if unreachable:
        details = f"cannot reach {unreachable['address']} ({unreachable['reason']})"
    return (
        f"UNAVAILABLE: {details}; is the service running, and is this its --state-dir or"
        " --port-base? If it requires mutual TLS, the CLI needs QUARRY_INTERNAL_TLS=on and"
        " the internal certificate (docs/security.md)"
    )


# --- sql ------------------------------------------------------------------------------

SQL_FORMATS = ("text", "csv", "tsv", "json")
TEXT_ROW_LIMIT = 1000  # a table longer than this is read with --limit, or another format


def add_sql_command(sub: argparse._SubParsersAction, add: Callable) -> None:
    cmd = add(sub, "sql", "query the log store (ClickHouse or the embedded one)", sql)
    cmd.add_argument("sql", help='one statement, e.g. "SELECT count() FROM quarry.results"')
    cmd.add_argument(
        "--format",
        choices=SQL_FORMATS,
        default="text",
        help="text: an aligned table (default); csv and tsv: a header line, then the rows;"
        " json: JSON lines, one object per row (--json: one JSON array)",
    )
    cmd.add_argument(
        "--limit",
        type=_row_limit,
        help=f"print at most N rows, saying so when there were more (0: all; default"
        f" {TEXT_ROW_LIMIT} for text, all for the other formats)",
    )


def _row_limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows (0: all)")
    return int(text)


def sql(settings: Settings, args: argparse.Namespace) -> int:
    limit = args.limit
    if limit is None:
        limit = TEXT_ROW_LIMIT if args.format == "text" and not args.json else 0
    stub = logs_pb2_grpc.LogStoreStub(sync_channel(settings.service_addr("ingest")))
    reply = call_rpc(stub.Query, logs_pb2.SqlRequest(sql=args.sql, max_rows=limit))
    if reply.error:
        raise CommandError(error_line(reply.error))
    columns = list(reply.columns)
    rows = [json.loads(r) for r in reply.rows_json]
    if args.json:
        emit_json([dict(zip(columns, row, strict=False)) for row in rows])
    elif args.format == "json":
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(columns, row, strict=False))) + "\n")
    elif args.format in ("csv", "tsv"):
        _write_delimited(columns, rows, "," if args.format == "csv" else "\t")
    else:
        emit_table(columns, rows)
    if reply.total_rows > len(rows):
        print(
            f"quarry sql: {len(rows)} of {reply.total_rows} rows shown (--limit {limit});"
            " --limit 0 shows all",
            file=sys.stderr,
        )
    return 0


def _write_delimited(columns: list[str], rows: list[list], delimiter: str) -> None:
    # csv's quoting for both: a tab or newline inside a value is quoted, never mistaken
    # for a separator. Arrays and maps are written as JSON, as the table shows them.
    writer = csv.writer(sys.stdout, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_delimited_cell(value) for value in row])


def _delimited_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


# --- enroll service (its commands are in quarry/cli/commands/enrollment.py) ---------------


def enroll_stub(settings: Settings) -> enroll_pb2_grpc.EnrollServiceStub:
    return enroll_pb2_grpc.EnrollServiceStub(sync_channel(settings.service_addr("enroll")))


# --- flags ----------------------------------------------------------------------------


def flags(settings: Settings, args: argparse.Namespace) -> int:
    """The flags osquery needs (quarry/cli/osquery_flags.py)."""
    lines = osquery_flags(settings, tls_files(settings).ca_cert, enroll_secret_file(settings))
    if args.json:
        emit_json(lines)
    else:
        print("\n".join(lines))
    return 0


# --- tls ------------------------------------------------------------------------------


def tls_client_cert(settings: Settings, args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise CommandError(f"{args.name!r}: use letters, digits, '.', '_' and '-' only")
    try:
        cert, key = issue_client_certificate(
            gateway_tls_dir(settings), args.name, Path(args.out_dir)
        )
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot issue a client certificate: {exc}") from exc
    if args.json:
        emit_json({"name": args.name, "cert": str(cert), "key": str(key)})
    else:
        print(f"certificate {cert}\nkey         {key}")
        print(f"osquery: --tls_client_cert={cert} --tls_client_key={key}", file=sys.stderr)
    return 0
