"""How a service process starts: `python -m PACKAGE`, each package's __main__.py calling
run_entry_point.

`quarry serve NAME` and `quarry up` start a service by its package's command line
(service_command) rather than importing it, so quarry/ imports no service
(docs/architecture.md). The same entry point applies a stateful service's own schema
migrations (`python -m enroll_service migrate [--dry-run] [--json]`), which is what
`quarry migrate` runs for each service (quarry/cli/commands/migrate.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from quarry.runtime.command_output import emit_json, emit_table, progress
from quarry.runtime.garbage_collection import tune_for_throughput
from quarry.runtime.process_logging import setup_logging
from quarry.runtime.settings import Settings
from quarry.state.database import DatabaseUnavailable, open_state_database
from quarry.state.service_database import ServiceSchema, migrate_service

# The package each service runs from (`python -m PACKAGE`).
SERVICE_PACKAGES = {
    "gateway": "gateway",
    "enroll": "enroll_service",
    "config": "config_service",
    "distributed": "distributed_service",
    "ingest": "ingest_service",
    "api": "api_service",
    "detection": "detection_service",
}


def service_command(service: str, *args: str) -> list[str]:
    """The command line that runs `service` (with these arguments) in a new interpreter."""
    return [sys.executable, "-m", SERVICE_PACKAGES[service], *args]


def service_of(argv: Sequence[str]) -> str | None:
    """The service a process's command line (/proc/PID/cmdline) runs, if it is one."""
    packages = {package: service for service, package in SERVICE_PACKAGES.items()}
    if len(argv) >= 3 and argv[-2] == "-m":
        return packages.get(argv[-1])
    return None


def run_entry_point(
    service: str,
    main: Callable[[Settings], None],
    schema: ServiceSchema | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """A service's `__main__`: serve (no arguments), or `migrate` its own state."""
    args = _parser(service, schema).parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    if args.command == "migrate" and schema is not None:
        return migrate_own_state(settings, schema, args.dry_run, args.json)
    setup_logging(service, settings.log_level)
    tune_for_throughput()  # the service's modules are imported: their objects are frozen
    main(settings)
    return 0


def _parser(service: str, schema: ServiceSchema | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {SERVICE_PACKAGES[service]}",
        description=f"Run the {service} service, settings from QUARRY_* variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if schema is not None:
        cmd = sub.add_parser(
            "migrate",
            help=f"apply the {service} state's schema migrations (what `quarry migrate` runs)",
        )
        cmd.add_argument("--dry-run", action="store_true", help="show what is pending")
        cmd.add_argument(
            "--json",
            action="store_true",
            help="print {database, dry_run, migrations} or {error} as JSON, no progress",
        )
    return parser


def migrate_own_state(settings: Settings, schema: ServiceSchema, dry_run: bool, json: bool) -> int:
    """Apply (or with dry_run, list) this service's migrations; 1 when its database is
    unreachable. With json, one JSON object on stdout and nothing on stderr."""
    service = schema.service
    try:
        database = open_state_database(settings, service, read_only=dry_run)
    except DatabaseUnavailable as exc:
        if json:
            emit_json({"error": str(exc)})
        else:
            print(f"{service} migrate: {exc}", file=sys.stderr)
        return 1
    try:
        where = database.describe()
        if not json:
            progress(f"{service}: {where}")
        steps = migrate_service(
            database,
            schema,
            dry_run=dry_run,
            progress=None if json else lambda step: show_step(step.as_dict()),
        )
    finally:
        database.close()
    if json:
        emit_json(
            {"database": where, "dry_run": dry_run, "migrations": [s.as_dict() for s in steps]}
        )
    else:
        emit_table(*migration_table([s.as_dict() for s in steps]))
    return 0


def migration_table(steps: list[dict]) -> tuple[tuple[str, ...], list[tuple]]:
    """The columns and rows `quarry migrate` shows for steps (MigrationStep.as_dict)."""
    columns = ("component", "version", "name", "status")
    return columns, [tuple(step[c] for c in columns) for step in steps]


def show_step(step: dict) -> None:
    """The progress line of a step (MigrationStep.as_dict) that was applied now."""
    if step["status"] == "applied":
        progress(f"{step['component']}: applied {step['version']} ({step['name']})")
