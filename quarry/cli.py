"""The `quarry` command: run the cluster, run one service, administer a running one.

Settings come from QUARRY_* environment variables; the global options below set the
most common ones for this command and every process it starts.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from quarry import admin_commands, config_commands, enrollment_commands
from quarry.process_logging import setup_logging
from quarry.settings import SERVICES, Settings

SERVICE_MODULES = {
    "gateway": "gateway.server",
    "enroll": "enroll_service.server",
    "config": "config_service.server",
    "distributed": "distributed_service.server",
    "ingest": "ingest_service.server",
}


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

    sub.add_parser("up", help="run the whole cluster on this machine (what `make run` does)")
    serve = sub.add_parser("serve", help="run one service (what a Kubernetes pod runs)")
    serve.add_argument("service", choices=SERVICES)

    cmd = _admin(
        sub, "sql", "query the log store (ClickHouse or the embedded one)", admin_commands.sql
    )
    cmd.add_argument("sql", help='e.g. "SELECT count() FROM quarry.results"')

    config_commands.add_config_commands(sub, _admin)
    enrollment_commands.add_secret_commands(sub, _admin)
    enrollment_commands.add_node_commands(sub, _admin)

    query = sub.add_parser("query", help="live queries")
    query_sub = query.add_subparsers(dest="query_command", required=True, metavar="ACTION")
    cmd = _admin(
        query_sub,
        "run",
        "run SQL on nodes now; wait for and print their answers",
        admin_commands.query_run,
    )
    cmd.add_argument("sql")
    cmd.add_argument(
        "--node", action="append", help="target this node id (repeatable); default: every node"
    )
    cmd.add_argument(
        "--tag",
        action="append",
        help="target the active nodes with this tag from their enroll secret (repeatable: any)",
    )
    cmd.add_argument(
        "--ttl",
        type=int,
        default=0,
        help="seconds during which nodes checking in still get it (default 1 h)",
    )
    cmd.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for answers before printing the account",
    )
    cmd.add_argument("--author", default=os.environ.get("USER", ""))
    cmd = _admin(
        query_sub, "show", "the per-host account of a live query", admin_commands.query_show
    )
    cmd.add_argument("id")
    _admin(query_sub, "list", "live queries, newest first", admin_commands.query_list)
    cmd = _admin(query_sub, "cancel", "stop handing a live query out", admin_commands.query_cancel)
    cmd.add_argument("id")

    _admin(sub, "flags", "print the osquery flags that connect a node", admin_commands.flags)
    tls = sub.add_parser("tls", help="certificates of the local CA")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    cmd = _admin(
        tls_sub,
        "client-cert",
        "issue a client certificate from the local CA, for osquery's --tls_client_cert",
        admin_commands.tls_client_cert,
    )
    cmd.add_argument("name", help="the certificate's common name (and DNS SAN), e.g. the host")
    cmd.add_argument("-o", "--out-dir", default=".", help="where to write NAME.pem and NAME.key")
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


def serve(service: str, settings: Settings) -> int:
    setup_logging(service, settings.log_level)
    importlib.import_module(SERVICE_MODULES[service]).main(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _apply_global_options(args)
    settings = Settings.from_env()
    if args.command == "up":
        from quarry.supervisor import run_cluster

        return run_cluster(settings)
    if args.command == "serve":
        return serve(args.service, settings)
    try:
        return args.handler(settings, args)
    except admin_commands.CommandError as exc:
        print(f"quarry {args.command}: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"quarry {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
