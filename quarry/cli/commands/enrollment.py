"""Admin commands for enrollment: `quarry secret ...` and `quarry node ...`.

Each command is one EnrollService call (see protos/v1/enroll.proto). A secret's value is
printed once, when it is created or rotated: the service keeps only its hash.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.cli.commands import inventory
from quarry.cli.commands.admin import CommandError, call_rpc, enroll_stub
from quarry.cli.commands.node_names import NODE_NAME_HELP
from quarry.runtime.command_output import (
    emit_json,
    emit_once,
    emit_table,
    proto_to_json,
    utc_iso,
)
from quarry.runtime.settings import Settings

AddCommand = Callable[..., argparse.ArgumentParser]

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PATTERN = re.compile(r"^(\d+)([smhd])$")
NODE_STATUSES = ("active", "pending", "revoked")
DEFAULT_ROTATION_GRACE = "24h"


# --- parsing what people type ---------------------------------------------------------


def parse_duration(text: str) -> int:
    """Seconds in "30s", "15m", "12h" or "7d"."""
    match = DURATION_PATTERN.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use a number and a unit: 30s, 15m, 12h or 7d"
        )
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_quota(text: str) -> int:
    """A maximum number of enrollments: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of enrollments (1 or more)")
    return int(text)


def parse_expiry(text: str, now: float | None = None) -> int:
    """Unix time from a duration from now ("7d") or a UTC time ("2026-12-31T00:00Z")."""
    now = time.time() if now is None else now
    if DURATION_PATTERN.match(text.strip()):
        return int(now) + parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (7d, 12h) nor an ISO-8601 time (2026-12-31T00:00Z)"
        ) from None
    if moment.tzinfo is None:
        # Times people type are UTC, like every time the CLI prints.
        moment = moment.replace(tzinfo=UTC)
    expires_at = int(moment.timestamp())
    if expires_at <= now:
        raise argparse.ArgumentTypeError(f"{text!r} is in the past")
    return expires_at


# --- the commands' arguments ----------------------------------------------------------


def add_secret_commands(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry secret create|list|revoke|rotate`; `add` is cli._admin (adds --json)."""
    secret = sub.add_parser("secret", help="enroll secrets: what a node presents to enroll")
    actions = secret.add_subparsers(dest="secret_command", required=True, metavar="ACTION")

    cmd = add(actions, "create", "create an enroll secret; prints its value once", secret_create)
    cmd.add_argument("name", help="e.g. prod-linux; rotation keeps the name")
    cmd.add_argument(
        "--tag", action="append", default=[], help="tag every node enrolled with it (repeatable)"
    )
    cmd.add_argument("--group", default="", help="group every node enrolled with it")
    cmd.add_argument(
        "--expires",
        type=parse_expiry,
        default=0,
        metavar="WHEN",
        help="stop accepting it at a UTC time (2026-12-31T00:00Z) or after 30s/15m/12h/7d",
    )
    cmd.add_argument(
        "--max-enrollments",
        type=parse_quota,
        default=0,
        metavar="N",
        help="quota of machines: N distinct hosts may enroll (re-enrolling counts once)",
    )
    cmd.add_argument(
        "--one-time", action="store_true", help="valid for a single machine (it may re-enroll)"
    )
    cmd.add_argument(
        "--require-approval",
        action="store_true",
        help="nodes enrolled with it stay pending (empty config) until `quarry node approve`",
    )
    cmd.add_argument(
        "--allow-reenroll-after-revoke",
        action="store_true",
        help="let a revoked or rejected node enroll again with it",
    )

    cmd = add(actions, "list", "enroll secrets with their use; never their values", secret_list)
    cmd.add_argument("--all", action="store_true", help="also revoked and expired secrets")

    cmd = add(actions, "revoke", "stop accepting an enroll secret now", secret_revoke)
    cmd.add_argument("secret", help="secret id, or a name (every secret of that name)")

    cmd = add(
        actions,
        "rotate",
        "new value for a secret; the old one keeps working for a grace period",
        secret_rotate,
    )
    cmd.add_argument("secret", help="secret id or name")
    cmd.add_argument(
        "--grace",
        type=parse_duration,
        default=parse_duration(DEFAULT_ROTATION_GRACE),
        metavar="DURATION",
        help=f"how long the old value keeps working (default {DEFAULT_ROTATION_GRACE})",
    )


def add_node_commands(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry node list|show|approve|reject|revoke` (`quarry nodes` is an alias)."""
    node = sub.add_parser("node", aliases=["nodes"], help="enrolled osquery nodes")
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")

    cmd = add(actions, "list", "list enrolled nodes", node_list)
    cmd.add_argument("--status", choices=NODE_STATUSES, help="only nodes in this state")
    cmd.add_argument("--tag", help="only nodes with this tag")
    cmd.add_argument(
        "--platform",
        help="only nodes of this family (linux, darwin, windows, freebsd) or os name (ubuntu)",
    )
    cmd.add_argument(
        "--search",
        metavar="TEXT",
        help="only nodes whose hostname, host identifier or node id contains TEXT",
    )
    cmd.add_argument("--secret", help="only nodes enrolled with the secret of this name")
    cmd.add_argument("--clones", action="store_true", help="only nodes whose identity looks cloned")
    cmd.add_argument(
        "--os-version",
        metavar="TEXT",
        help="only nodes whose latest vitals' OS name and version contain TEXT (e.g. 22.04)",
    )
    cmd.add_argument(
        "--stale",
        action="store_true",
        help="only active nodes with no vitals answer for two vitals periods (2 h by default),"
        " or none",
    )
    cmd.add_argument(
        "--stale-after",
        type=int,
        metavar="SECONDS",
        help="with --stale: stale after this many seconds without a vitals answer instead",
    )

    ref_help = NODE_NAME_HELP + " (an ambiguous name is refused with the candidates)"
    for name, help_text, handler in (
        ("show", "one node in detail: identity, secret, enrollments, host, vitals", node_show),
        ("approve", "let a pending node get its config and live queries", node_approve),
        ("reject", "refuse a pending node; it may not enroll again", node_reject),
        ("revoke", "invalidate a node's key; its next request gets node_invalid", node_revoke),
    ):
        add(actions, name, help_text, handler).add_argument("node", help=ref_help)


# --- secrets --------------------------------------------------------------------------


def secret_create(settings: Settings, args: argparse.Namespace) -> int:
    request = enroll_pb2.CreateSecretRequest(
        name=args.name,
        tags=args.tag,
        group=args.group,
        expires_at=args.expires,
        max_enrollments=args.max_enrollments,
        one_time=args.one_time,
        requires_approval=args.require_approval,
        allows_reenrollment_after_revocation=args.allow_reenroll_after_revoke,
    )
    created = call_rpc(enroll_stub(settings).CreateSecret, request)
    if args.json:
        emit_once(created.value, proto_to_json(created.secret))
        return 0
    _print_value_once(created.value, f"created enroll secret {_describe_secret(created.secret)}")
    return 0


def secret_list(settings: Settings, args: argparse.Namespace) -> int:
    request = enroll_pb2.ListSecretsRequest(include_inactive=args.all)
    secrets = call_rpc(enroll_stub(settings).ListSecrets, request).secrets
    if args.json:
        emit_json([proto_to_json(s) for s in secrets])
        return 0
    rows = [
        (
            s.name,
            s.secret_id,
            ",".join(s.tags),
            s.group,
            s.state,
            _quota_text(s),
            utc_iso(s.last_used_at),
            utc_iso(s.expires_at, zero="never"),
        )
        for s in secrets
    ]
    # A quota counts machines (identities): a re-enrolling machine counts once.
    columns = ["name", "id", "tags", "group", "state", "machines", "last_used", "expires"]
    emit_table(columns, rows)
    return 0


def secret_revoke(settings: Settings, args: argparse.Namespace) -> int:
    secret = call_rpc(enroll_stub(settings).RevokeSecret, enroll_pb2.SecretRef(secret=args.secret))
    if args.json:
        emit_json(proto_to_json(secret))
    else:
        print(f"revoked enroll secret {_describe_secret(secret)}; nodes can no longer enroll")
        print("nodes already enrolled with it keep working (revoke them with `quarry node revoke`)")
    return 0


def secret_rotate(settings: Settings, args: argparse.Namespace) -> int:
    stub = enroll_stub(settings)
    request = enroll_pb2.RotateSecretRequest(secret=args.secret, grace_seconds=args.grace)
    created = call_rpc(stub.RotateSecret, request)
    # The new value exists only in this reply: nothing between here and its printing may
    # fail, so when the old value's expiry cannot be read it is the one asked for.
    try:
        old_until = _old_value_expiry(stub, created.secret)
    except CommandError:
        old_until = 0
    old_until = old_until or int(time.time()) + args.grace
    if args.json:
        emit_once(created.value, proto_to_json(created.secret) | {"old_expires_at": old_until})
        return 0
    _print_value_once(
        created.value,
        f"rotated enroll secret {_describe_secret(created.secret)}\n"
        f"the old value keeps working until {utc_iso(old_until)}; roll the new one out first",
    )
    return 0


def _old_value_expiry(stub: enroll_pb2_grpc.EnrollServiceStub, new: enroll_pb2.EnrollSecret) -> int:
    """When the replaced secret stops working, as the service recorded it (0: unknown)."""
    listing = call_rpc(stub.ListSecrets, enroll_pb2.ListSecretsRequest(include_inactive=True))
    older = [
        s.expires_at
        for s in listing.secrets
        if s.name == new.name and s.secret_id != new.secret_id and s.state == "active"
    ]
    return max(older, default=0)


def _print_value_once(value: str, what_happened: str) -> None:
    # The value alone on stdout, so `quarry secret create NAME > file` writes a secret
    # file osquery can read; the explanation goes to stderr, after it.
    emit_once(value)
    _note(what_happened)
    _note(
        "This value is shown only now: Quarry stores only its hash and cannot show it again.\n"
        "Put it in a file on each host (mode 0600) and point osqueryd at it:\n"
        "  --enroll_secret_path=/etc/osquery/enroll_secret"
    )


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _describe_secret(secret: enroll_pb2.EnrollSecret) -> str:
    parts = [f"{secret.name!r} (id {secret.secret_id})"]
    if secret.tags:
        parts.append(f"tags {','.join(secret.tags)}")
    if secret.group:
        parts.append(f"group {secret.group}")
    if secret.expires_at:
        parts.append(f"expires {utc_iso(secret.expires_at)}")
    if secret.requires_approval:
        parts.append("nodes need approval")
    return ", ".join(parts)


def _quota_text(secret: enroll_pb2.EnrollSecret) -> str:
    if secret.one_time:
        return f"{secret.enrollments}/1 (one-time)"
    return f"{secret.enrollments}/{secret.max_enrollments or '-'}"


# --- nodes ----------------------------------------------------------------------------


def node_list(settings: Settings, args: argparse.Namespace) -> int:
    request = enroll_pb2.ListNodesRequest(
        status=args.status or "",
        tag=args.tag or "",
        platform=args.platform or "",
        secret_name=args.secret or "",
        suspected_clones=args.clones,
        search=args.search or "",
    )
    nodes = list(call_rpc(enroll_stub(settings).ListNodes, request).nodes)
    by_vitals = args.os_version is not None or args.stale
    vitals: dict[str, dict] = {}
    if by_vitals:
        vitals = inventory.fleet_vitals(settings)
        stale = inventory.stale_after(settings, args) if args.stale else None
        now = time.time()
        # Pending and revoked nodes are never asked (docs/inventory.md): never stale.
        nodes = [
            n
            for n in nodes
            if inventory.matches_vitals(vitals.get(n.node_id), args.os_version, stale, now)
            and (stale is None or node_status(n) == "active")
        ]
    if args.json:
        emit_json(
            [
                _node_json(n) | ({"vitals": vitals.get(n.node_id)} if by_vitals else {})
                for n in nodes
            ]
        )
        return 0
    rows = [
        (
            n.node_id,
            n.hostname,
            n.host_identifier,
            n.platform,
            n.osquery_version,
            ",".join(n.tags),
            n.secret_name,
            node_status(n),
            utc_iso(n.last_seen_at),
            *(_vitals_cells(vitals.get(n.node_id)) if by_vitals else ()),
        )
        for n in nodes
    ]
    columns = [
        "node_id", "hostname", "host_identifier", "platform", "osquery", "tags", "secret",
        "status", "last_seen",
    ]  # fmt: skip
    if by_vitals:
        columns += ["os", "vitals_age"]
    emit_table(columns, rows)
    return 0


def _vitals_cells(vitals: dict | None) -> tuple[str, str]:
    if vitals is None:
        return "-", "never"
    age = inventory.age_text(time.time() - vitals["last_answer_at"])
    return _words(vitals["os_name"], vitals["os_version"]) or "-", age


def node_show(settings: Settings, args: argparse.Namespace) -> int:
    details = call_rpc(enroll_stub(settings).ShowNode, enroll_pb2.NodeRef(node=args.node))
    host_details = _host_details(details.host_details_json)
    try:
        vitals: dict | None = inventory.node_vitals(settings, details.node.node_id)
        vitals_error = ""
    except CommandError as exc:  # the node's record is still worth showing
        vitals, vitals_error = None, str(exc)
    if args.json:
        emit_json(
            proto_to_json(details)
            | {"node": _node_json(details.node), "host_details_json": host_details}
            | {"vitals": vitals}
        )
        return 0
    lines = _node_detail_lines(details, host_details)
    if vitals is None:
        lines.append(("vitals", f"unavailable: {vitals_error}"))
    else:
        lines.extend(inventory.vitals_lines(vitals))
    for label, value in lines:
        print(f"{label + ':':<22}{value}")
    return 0


def _node_detail_lines(
    details: enroll_pb2.NodeDetails, host_details: dict
) -> list[tuple[str, str]]:
    n = details.node
    cert = details.client_certificate
    lines = [
        ("node id", n.node_id),
        ("status", node_status(n)),
        ("host identifier", n.host_identifier),
        ("hostname", n.hostname),
        ("identity", n.identity),
        ("hardware serial", n.hardware_serial or "-"),
        ("platform", f"{n.platform} (platform_type {n.platform_type or '-'})"),
        ("osquery", n.osquery_version or "-"),
        ("tags", ", ".join(n.tags) or "-"),
        ("group", n.group or "-"),
        ("enroll secret", n.secret_name or "-"),
        ("first enrolled", utc_iso(n.first_enrolled_at)),
        ("last enrolled", utc_iso(n.enrolled_at)),
        ("last seen", utc_iso(n.last_seen_at)),
        ("pending approval", "yes" if n.pending else "no"),
        ("recent enrollments", str(details.recent_enrollments)),
        ("suspected clone", "YES" if details.suspected_clone else "no"),
        ("client certificate", cert.subject or "none"),
    ]
    if cert.subject:
        lines.append(("  SANs", ", ".join(cert.subject_alt_names) or "-"))
        lines.append(("  sha256", cert.sha256_fingerprint))
    lines.extend(_host_summary(host_details))
    return lines


def _host_summary(host_details: dict) -> list[tuple[str, str]]:
    """The few host_details facts people look for first; --json has all of them."""
    system = host_details.get("system_info", {})
    os_version = host_details.get("os_version", {})
    facts = [
        ("os", _words(os_version.get("name"), os_version.get("version"))),
        ("hardware", _words(system.get("hardware_vendor"), system.get("hardware_model"))),
        ("hardware uuid", system.get("uuid", "")),
        ("cpu", system.get("cpu_brand", "")),
        ("memory bytes", system.get("physical_memory", "")),
    ]
    return [(label, value) for label, value in facts if value]


def _words(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _host_details(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def node_approve(settings: Settings, args: argparse.Namespace) -> int:
    node = call_rpc(enroll_stub(settings).ApproveNode, enroll_pb2.NodeRef(node=args.node))
    _print_node_change(node, args.json, "approved; it gets its config and live queries")
    return 0


def node_reject(settings: Settings, args: argparse.Namespace) -> int:
    node = call_rpc(enroll_stub(settings).RejectNode, enroll_pb2.NodeRef(node=args.node))
    _print_node_change(node, args.json, "rejected; its key is revoked and it may not enroll again")
    return 0


def node_revoke(settings: Settings, args: argparse.Namespace) -> int:
    node = call_rpc(enroll_stub(settings).RevokeNode, enroll_pb2.NodeRef(node=args.node))
    _print_node_change(node, args.json, "revoked; its next request gets node_invalid")
    return 0


def _print_node_change(node: enroll_pb2.Node, as_json: bool, what_happened: str) -> None:
    if as_json:
        emit_json(_node_json(node))
    else:
        print(f"node {node.node_id} ({node.hostname or node.host_identifier}) {what_happened}")


def node_status(node: enroll_pb2.Node) -> str:
    if node.revoked:
        return "revoked"
    return "pending" if node.pending else "active"


def _node_json(node: enroll_pb2.Node) -> dict:
    # A node key is a credential: admin output never carries it.
    return proto_to_json(node) | {"node_key": None, "status": node_status(node)}
