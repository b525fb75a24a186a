"""Admin commands: each talks to one service over gRPC and prints for people or --json.

The config commands are in quarry/cli/commands/config.py, the enrollment ones in
quarry/cli/commands/enrollment.py, the live query ones in quarry/cli/commands/queries.py.
"""

from __future__ import annotations

import argparse
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


def rpc_error_line(exc: grpc.RpcError) -> str:
    """One line for a failed call; an unreachable service gets the likely reasons."""
    details = " ".join((exc.details() or "").split())
    line = f"{exc.code().name}: {details}"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        line += (
            " (is the service running? If it requires mutual TLS, the CLI needs "
            "QUARRY_INTERNAL_TLS=on and the internal certificate; docs/security.md)"
        )
    return line


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


# --- enroll service (its commands are in quarry/cli/commands/enrollment.py) ---------------


def enroll_stub(settings: Settings) -> enroll_pb2_grpc.EnrollServiceStub:
    return enroll_pb2_grpc.EnrollServiceStub(sync_channel(settings.service_addr("enroll")))


# --- flags ----------------------------------------------------------------------------


def flags(settings: Settings, args: argparse.Namespace) -> int:
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
