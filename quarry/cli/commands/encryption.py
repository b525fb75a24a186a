"""Commands that make the keys of service-to-service encryption (docs/security.md).

`quarry tls internal init|issue|show`: the internal CA and certificates for gRPC mutual
TLS (quarry/encryption/internal_tls.py). `quarry curve init|add-client|list`: the ZeroMQ
CURVE keys of the log path (quarry/encryption/zmq_curve.py). They write files under the
state directory (or where the settings point) and talk to no service, so they work before
the cluster runs: make the files here, then copy them into Kubernetes Secrets.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import zmq.auth

from quarry.cli.commands.admin import CommandError
from quarry.encryption.internal_tls import (
    DEFAULT_SANS,
    certificate_summary,
    ensure_shared_certificate,
    internal_tls_files,
    issue_certificate,
)
from quarry.encryption.zmq_curve import (
    AUTHORIZED_DIR,
    authorize_client,
    create_key_pair,
    ensure_curve_keys,
)
from quarry.runtime.command_output import emit_json, emit_table
from quarry.runtime.settings import Settings
from quarry.state.directory import internal_tls_dir, zmq_curve_dir

AddCommand = Callable[..., argparse.ArgumentParser]
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def add_internal_tls_commands(tls_actions: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry tls internal ...`; `add` is cli._admin (adds --json)."""
    internal = tls_actions.add_parser(
        "internal",
        help="the internal CA and certificates for gRPC between Quarry's processes (mTLS)",
        description="The internal CA and certificates for gRPC mutual TLS "
        "(QUARRY_INTERNAL_TLS); files go to STATE_DIR/internal-tls/.",
    )
    actions = internal.add_subparsers(dest="internal_command", required=True, metavar="ACTION")
    cmd = add(
        actions,
        "init",
        "make the internal CA and the certificate every process presents (kept if present)",
        internal_init,
    )
    cmd.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="one more name or IP the services are reached by (repeatable); always included: "
        + ", ".join(DEFAULT_SANS),
    )
    cmd.add_argument(
        "--renew",
        action="store_true",
        help="issue the certificate again from the same CA (rotation; the CA is kept)",
    )
    cmd = add(
        actions,
        "issue",
        "issue one more certificate from the internal CA (a service, an admin workstation)",
        internal_issue,
    )
    cmd.add_argument("name", help="the certificate's common name; files NAME.pem and NAME.key")
    cmd.add_argument(
        "--san", action="append", default=[], metavar="NAME", help="a DNS name or IP (repeatable)"
    )
    cmd.add_argument("-o", "--out-dir", default=".", help="where to write NAME.pem and NAME.key")
    add(
        actions,
        "show",
        "the internal CA and this process's certificate: subject, SANs, expiry",
        internal_show,
    )


def add_curve_commands(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry curve ...`; `add` is cli._admin (adds --json)."""
    curve = sub.add_parser(
        "curve",
        help="ZeroMQ CURVE keys for the log path, gateway -> ingest (QUARRY_ZMQ_CURVE)",
        description="ZeroMQ CURVE keys for the log path (QUARRY_ZMQ_CURVE); files go to "
        "QUARRY_ZMQ_CURVE_DIR, default STATE_DIR/zmq-curve/.",
    )
    actions = curve.add_subparsers(dest="curve_command", required=True, metavar="ACTION")
    add(
        actions,
        "init",
        "make the ingest (server) and gateway (client) key pairs; existing keys are kept",
        curve_init,
    )
    cmd = add(
        actions,
        "add-client",
        "make one more gateway key pair and authorize it (rotation: then swap it in)",
        curve_add_client,
    )
    cmd.add_argument("name", help="files NAME.key and NAME.key_secret; allow-list entry NAME.key")
    cmd = add(
        actions,
        "authorize",
        "let ingest accept a gateway public key made elsewhere (a pyzmq .key file)",
        curve_authorize,
    )
    cmd.add_argument("name", help="its allow-list entry, authorized_clients/NAME.key")
    cmd.add_argument("public_key_file", help="the gateway's NAME.key (public part only)")
    add(actions, "list", "the gateway public keys ingest accepts", curve_list)


# --- tls internal ---------------------------------------------------------------------


def internal_init(settings: Settings, args: argparse.Namespace) -> int:
    folder = internal_tls_dir(settings)
    try:
        cert, key, issued = ensure_shared_certificate(folder, args.san, renew=args.renew)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot make the internal certificates: {exc}") from exc
    summary = {
        "ca": str(folder / "ca.pem"),
        "ca_key": str(folder / "ca.key"),
        "cert": str(cert),
        "key": str(key),
        "issued": issued,
        "sans": certificate_summary(cert)["sans"],
    }
    if args.json:
        emit_json(summary)
        return 0
    print(("issued" if issued else "kept the existing") + " internal certificate")
    for label in ("ca", "ca_key", "cert", "key"):
        print(f"  {label:<7} {summary[label]}")
    print("  SANs    " + ", ".join(summary["sans"]))
    print("Every process (and the CLI): QUARRY_INTERNAL_TLS=on; ca.key stays offline.")
    return 0


def internal_issue(settings: Settings, args: argparse.Namespace) -> int:
    if not NAME_PATTERN.fullmatch(args.name):
        raise CommandError(f"{args.name!r}: use letters, digits, '.', '_' and '-' only")
    try:
        cert, key = issue_certificate(
            internal_tls_dir(settings), args.name, [args.name, *args.san], Path(args.out_dir)
        )
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot issue an internal certificate: {exc}") from exc
    if args.json:
        emit_json({"name": args.name, "cert": str(cert), "key": str(key)})
    else:
        print(f"certificate {cert}\nkey         {key}")
    return 0


def internal_show(settings: Settings, args: argparse.Namespace) -> int:
    files = internal_tls_files(settings)
    shown = [certificate_summary(path) for path in (files.ca_cert, files.cert) if path.is_file()]
    if not shown:
        raise CommandError(f"no internal CA at {files.ca_cert}; run `quarry tls internal init`")
    if args.json:
        emit_json(shown)
    else:
        rows = [[s["path"], s["subject"], ", ".join(s["sans"]), s["not_after"]] for s in shown]
        emit_table(["file", "subject", "SANs", "expires"], rows)
    return 0


# --- curve ----------------------------------------------------------------------------


def curve_init(settings: Settings, args: argparse.Namespace) -> int:
    folder = zmq_curve_dir(settings)
    try:
        made = ensure_curve_keys(folder)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot make the CURVE keys: {exc}") from exc
    if args.json:
        emit_json({"dir": str(folder), "created": [str(p) for p in made]})
        return 0
    print(f"CURVE keys in {folder}: " + (f"made {len(made)} files" if made else "all present"))
    for path in made:
        print(f"  {path}")
    print("ingest needs server.key_secret and authorized_clients/; gateways need server.key")
    print("and client.key_secret. Then QUARRY_ZMQ_CURVE=on everywhere.")
    return 0


def curve_add_client(settings: Settings, args: argparse.Namespace) -> int:
    if not NAME_PATTERN.fullmatch(args.name):
        raise CommandError(f"{args.name!r}: use letters, digits, '.', '_' and '-' only")
    folder = zmq_curve_dir(settings)
    if (folder / f"{args.name}.key_secret").exists():
        raise CommandError(f"{folder / args.name}.key_secret exists; choose another name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        public, secret = create_key_pair(folder, args.name)
        authorized = authorize_client(folder, public, args.name)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot make a CURVE key pair: {exc}") from exc
    result = {"public": str(public), "secret": str(secret), "authorized": str(authorized)}
    if args.json:
        emit_json(result)
    else:
        print(f"public     {public}\nsecret     {secret}\nauthorized {authorized}")
    return 0


def curve_authorize(settings: Settings, args: argparse.Namespace) -> int:
    if not NAME_PATTERN.fullmatch(args.name):
        raise CommandError(f"{args.name!r}: use letters, digits, '.', '_' and '-' only")
    try:
        authorized = authorize_client(
            zmq_curve_dir(settings), Path(args.public_key_file), args.name
        )
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot authorize {args.public_key_file}: {exc}") from exc
    if args.json:
        emit_json({"name": args.name, "authorized": str(authorized)})
    else:
        print(f"authorized {authorized} (ingest reads it within seconds)")
    return 0


def curve_list(settings: Settings, args: argparse.Namespace) -> int:
    folder = zmq_curve_dir(settings) / AUTHORIZED_DIR
    keys = []
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise CommandError(f"{path}: {exc}") from exc
        keys.append({"name": path.stem, "public_key": public.decode(), "file": str(path)})
    if args.json:
        emit_json(keys)
    else:
        emit_table(["name", "public key", "file"], [list(k.values()) for k in keys])
    return 0
