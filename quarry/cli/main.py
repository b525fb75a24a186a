"""The `quarry` command: run the cluster, run one service, administer a running one.

Settings come from QUARRY_* environment variables; the global options below set the
most common ones for this command and every process it starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from quarry.cli.commands import (
    admin,
    carves,
    config,
    encryption,
    enrollment,
    labels,
    migrate,
    queries,
    tokens,
)
from quarry.runtime.settings import SERVICES, Settings
from quarry.serving.service_entry import service_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quarry", description="Quarry, an osquery fleet server.")
    parser.add_argument(
        "--state-dir",
        help="where state, certificates and secrets live (QUARRY_STATE_DIR, default ./.quarry)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        help="shift every port: gateway N, services N+1.., metrics N+10.. (QUARRY_PORT_BASE)",
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
    serve.add_argument("service", choices=SERVICES)

    cmd = _admin(sub, "sql", "query the log store (ClickHouse or the embedded one)", admin.sql)
    cmd.add_argument("sql", help='e.g. "SELECT count() FROM quarry.results"')

    config.add_config_commands(sub, _admin)
    enrollment.add_secret_commands(sub, _admin)
    enrollment.add_node_commands(sub, _admin)
    labels.add_label_commands(sub, _admin)

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


def _apply_global_options(args: argparse.Namespace) -> None:
    if args.state_dir:
        os.environ["QUARRY_STATE_DIR"] = args.state_dir
    if args.port_base:
        os.environ["QUARRY_PORT_BASE"] = str(args.port_base)
    if args.clickhouse_url is not None:
        os.environ["QUARRY_CLICKHOUSE_URL"] = args.clickhouse_url


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
