"""Admin commands for access: `quarry token create|list|revoke` and `quarry audit list`.

Each is one EnrollService call (the enroll service keeps tokens and the audit log; see
quarry/access/admin_auth.py). A token's value is printed once, when it is created.
A token may be given a lifetime (--expires-in); without one it never expires.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from protos.v1 import enroll_pb2
from quarry.access.admin_auth import ROLES
from quarry.cli.commands.admin import call_rpc, enroll_stub
from quarry.cli.commands.enrollment import DURATION_PATTERN, parse_duration
from quarry.runtime.command_output import emit_json, emit_once, emit_table, proto_to_json, utc_iso
from quarry.runtime.settings import Settings

AddCommand = Callable[..., argparse.ArgumentParser]


def parse_since(text: str, now: float | None = None) -> int:
    """Unix milliseconds from a duration back from now ("15m") or a UTC time."""
    now = time.time() if now is None else now
    if DURATION_PATTERN.match(text.strip()):
        return int((now - parse_duration(text)) * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (15m, 12h) nor an ISO-8601 time (2026-12-31T00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # times people type are UTC
    return int(moment.timestamp() * 1000)


def parse_expires_in(text: str) -> int:
    """Seconds of a token's lifetime: a duration of at least one second."""
    seconds = parse_duration(text)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a lifetime of at least 1s (or no option)")
    return seconds


def add_access_commands(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry token ...` and `quarry audit list`; `add` is cli._admin (adds --json)."""
    token = sub.add_parser("token", help="admin API tokens: who may run admin commands")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    cmd = add(actions, "create", "create an admin token; prints its value once", token_create)
    cmd.add_argument("name", help="who or what holds it, e.g. alice or ci-deploy")
    cmd.add_argument("--role", choices=ROLES, required=True, help="what it may do")
    cmd.add_argument(
        "--expires-in",
        type=parse_expires_in,
        default=0,
        metavar="DURATION",
        help="refuse the token this long after now: 30m, 12h, 90d (default: it never expires)",
    )
    cmd = add(
        actions,
        "list",
        "admin tokens: role, state (active, expired, revoked), created, expires, last used;"
        " never their values",
        token_list,
    )
    cmd.add_argument("--all", action="store_true", help="also revoked tokens")
    cmd = add(actions, "revoke", "stop accepting a token (within seconds everywhere)", token_revoke)
    cmd.add_argument("name")

    audit = sub.add_parser("audit", help="the audit log of admin calls")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    cmd = add(actions, "list", "admin calls: when, who, what, outcome", audit_list)
    cmd.add_argument(
        "--since",
        type=parse_since,
        default=0,
        metavar="WHEN",
        help="only calls after a UTC time (2026-12-31T00:00Z) or within 30s/15m/12h/7d",
    )
    cmd.add_argument("--token", default="", metavar="NAME", help="only this token's calls")
    cmd.add_argument("--limit", type=int, default=1000, help="at most this many, newest")


def token_create(settings: Settings, args: argparse.Namespace) -> int:
    request = enroll_pb2.CreateTokenRequest(
        name=args.name, role=args.role, expires_in_seconds=args.expires_in
    )
    created = call_rpc(enroll_stub(settings).CreateToken, request)
    if args.json:
        emit_once(created.value, proto_to_json(created.token))
        return 0
    expires = utc_iso(created.token.expires_at, "never")
    print(
        f"created token {created.token.name} ({created.token.role}), expires: {expires}",
        file=sys.stderr,
    )
    print("its value, shown this once (QUARRY_ADMIN_TOKEN=...):", file=sys.stderr, flush=True)
    emit_once(created.value)
    return 0


def token_list(settings: Settings, args: argparse.Namespace) -> int:
    request = enroll_pb2.ListTokensRequest(include_revoked=args.all)
    tokens = call_rpc(enroll_stub(settings).ListTokens, request).tokens
    if args.json:
        emit_json([proto_to_json(t) for t in tokens])
        return 0
    rows = [
        (
            t.name,
            t.role,
            t.state,
            utc_iso(t.created_at),
            utc_iso(t.expires_at, "never"),
            utc_iso(t.last_used_at, "never"),
            utc_iso(t.revoked_at, ""),
        )
        for t in tokens
    ]
    emit_table(["name", "role", "state", "created", "expires", "last used", "revoked"], rows)
    return 0


def token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    token = call_rpc(enroll_stub(settings).RevokeToken, enroll_pb2.TokenRef(name=args.name))
    if args.json:
        emit_json(proto_to_json(token))
    else:
        print(f"revoked token {token.name} ({token.role})")
    return 0


def audit_list(settings: Settings, args: argparse.Namespace) -> int:
    request = enroll_pb2.ListAuditRequest(
        since_ms=args.since, token_name=args.token, limit=args.limit
    )
    entries = call_rpc(enroll_stub(settings).ListAudit, request).entries
    if args.json:
        emit_json([proto_to_json(e) for e in entries])
        return 0
    rows = [
        (
            _utc_ms(e.at_ms),
            e.token_name or "-",
            e.role or "-",
            e.service,
            e.method.rsplit("/", 1)[-1],
            e.outcome,
            e.summary,
        )
        for e in entries
    ]
    emit_table(["time", "token", "role", "service", "method", "outcome", "arguments"], rows)
    return 0


def _utc_ms(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
