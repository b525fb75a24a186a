"""The `quarry` command: run the cluster, run one service, administer a running one.

Settings come from QUARRY_* environment variables; the global options below set the
most common ones for this command and every process it starts. An admin command given
only `--state-dir` finds the cluster where that state directory's `quarry up` recorded it,
and `quarry up` started again listens there (quarry/cli/cluster_record.py). Output closed
early (`| head`) ends the command quietly with exit code 141, as a process killed by
SIGPIPE shows in the shell (docs/cli.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from quarry.cli.cluster_record import apply_record, reuse_recorded_ports
from quarry.cli.commands import (
    admin,
    carves,
    config,
    detections,
    encryption,
    enrollment,
    inventory,
    labels,
    migrate,
    queries,
    tokens,
)
from quarry.runtime.settings import PROCESSES, Settings
from quarry.serving.service_entry import service_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quarry", description="Quarry, an osquery fleet server.")
    parser.add_argument("--version", action="version", version=f"quarry {package_version()}")
    parser.add_argument(
        "--state-dir",
        help="where state, certificates and secrets live (QUARRY_STATE_DIR, default ./.quarry)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        help="shift every port: gateway N, services N+1.., metrics N+10.. (QUARRY_PORT_BASE;"
        " default: the ports the state directory's last `quarry up` recorded, else the defaults)",
    )
    parser.add_argument(
        "--clickhouse-url",
        help="ClickHouse server, e.g. clickhouse://default:@127.0.0.1:9000/quarry; "
        "default: embedded chdb (QUARRY_CLICKHOUSE_URL)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole cluster on this machine (what `make run` does)")
    up.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run a local Prometheus scraping every process (needs the prometheus binary)",
    )
    up.add_argument(
        "--prometheus-port",
        type=int,
        help="where that Prometheus listens (default: metrics port base + 5, i.e. 9405)",
    )
    up.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="seconds between that Prometheus's scrapes (default 15)",
    )
    serve = sub.add_parser("serve", help="run one service (what a Kubernetes pod runs)")
    serve.add_argument("service", choices=PROCESSES)

    admin.add_sql_command(sub, _admin)

    config.add_config_commands(sub, _admin)
    enrollment.add_secret_commands(sub, _admin)
    enrollment.add_node_commands(sub, _admin)
    inventory.add_software_commands(sub, _admin)
    labels.add_label_commands(sub, _admin)
    detections.add_detection_commands(sub, _admin)

    queries.add_query_commands(sub, _admin)
    carves.add_carve_commands(sub, _admin)
    tokens.add_access_commands(sub, _admin)

    migrate.add_migrate_command(sub, _admin)

    _admin(sub, "flags", "print the osquery flags that connect a node", admin.flags)
    tls = sub.add_parser("tls", help="certificates: the gateway's local CA, the internal CA")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    cmd = _admin(
        tls_sub,
        "client-cert",
        "issue a client certificate from the local CA, for osquery's --tls_client_cert",
        admin.tls_client_cert,
    )
    cmd.add_argument("name", help="the certificate's common name (and DNS SAN), e.g. the host")
    cmd.add_argument("-o", "--out-dir", default=".", help="where to write NAME.pem and NAME.key")
    encryption.add_internal_tls_commands(tls_sub, _admin)
    encryption.add_curve_commands(sub, _admin)
    return parser


def _admin(sub, name: str, help_text: str, handler: Callable) -> argparse.ArgumentParser:
    cmd = sub.add_parser(name, help=help_text, description=help_text)
    cmd.add_argument("--json", action="store_true", help="machine-readable output")
    cmd.set_defaults(handler=handler)
    return cmd


# Exit code when the output was closed early (`quarry ... | head`): 128 + SIGPIPE, what a
# shell shows for a program SIGPIPE ended (`yes | head`), so `set -o pipefail` scripts see
# the same as with any other command.
EXIT_BROKEN_PIPE = 141
# Commands that make files in a state directory that may not exist yet; every other admin
# command reads a running cluster's, so a mistyped --state-dir is a one-line error.
MAKES_STATE = {
    encryption.internal_init,
    encryption.internal_issue,
    encryption.curve_init,
    encryption.curve_add_client,
    encryption.curve_authorize,
    migrate.migrate,  # says itself what it needs (QUARRY_DATABASE_URL needs no directory)
}
# Commands that read the state directory's own files even when QUARRY_ADMIN_TOKEN is given.
READS_STATE_FILES = {admin.flags, admin.tls_client_cert}


def package_version() -> str:
    # The installed distribution's metadata (pyproject.toml's version), not a constant here.
    try:
        return version("quarry")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _apply_global_options(args: argparse.Namespace) -> None:
    if args.state_dir:
        os.environ["QUARRY_STATE_DIR"] = args.state_dir
    if args.port_base:
        os.environ["QUARRY_PORT_BASE"] = str(args.port_base)
    if args.clickhouse_url is not None:
        os.environ["QUARRY_CLICKHOUSE_URL"] = args.clickhouse_url
    # Admin commands and `quarry up` read the same record: a state directory's cluster is
    # where its last `quarry up` listened unless ports are given (cluster_record.py).
    if args.command == "up":
        note = reuse_recorded_ports(Settings.from_env().state_dir)
        if note:
            print(note, flush=True)
    elif args.command != "serve":
        apply_record(Settings.from_env().state_dir)


def missing_state_dir(settings: Settings, args: argparse.Namespace) -> str | None:
    """Why an admin command cannot run from this state directory, or None."""
    if args.handler in MAKES_STATE or settings.state_dir.is_dir():
        return None
    if os.environ.get("QUARRY_ADMIN_TOKEN") and args.handler not in READS_STATE_FILES:
        return None  # the token is given, and the services are found by their addresses
    return (
        f"no state directory {Path(settings.state_dir).resolve()}: run this where `quarry up`"
        " runs, or give its --state-dir (QUARRY_STATE_DIR)"
    )


def serve(service: str) -> NoReturn:
    """Become the service's own process, `python -m PACKAGE` (quarry/serving/service_entry.py).

    exec keeps the pid, the environment the global options set, the session and the
    parent-death signal `quarry up` asked for (quarry/cli/up_processes.py), so a pod or a
    supervisor that started `quarry serve NAME` signals the service itself.
    """
    command = service_command(service)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a closed output (`| head`) ends it quietly, never with a traceback.

    What Python's documentation recommends for SIGPIPE (library/signal.html, "Note on
    SIGPIPE"): point stdout at /dev/null, so the interpreter's final flush of what is
    still buffered cannot fail again, and exit.
    """
    try:
        try:
            code = _run(argv)
        except SystemExit:  # argparse's --help, --version and usage errors
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _apply_global_options(args)
    settings = Settings.from_env()
    if args.command == "up":
        from quarry.cli.local_prometheus import default_port
        from quarry.cli.supervisor import PrometheusOptions, run_cluster

        prometheus = None
        if args.with_prometheus:
            port = args.prometheus_port or default_port(settings)
            prometheus = PrometheusOptions(port, args.scrape_interval)
        return run_cluster(settings, prometheus=prometheus)
    if args.command == "serve":
        serve(args.service)
    problem = missing_state_dir(settings, args)
    if problem:
        print(f"quarry {args.command}: {problem}", file=sys.stderr)
        return 1
    try:
        return args.handler(settings, args)
    except admin.CommandError as exc:
        print(f"quarry {args.command}: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"quarry {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
