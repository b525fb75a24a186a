"""`quarry migrate`: apply the schema migrations of the enroll, config and distributed state.

The services apply their migrations themselves at start; this command does it ahead of
a rollout (e.g. a Kubernetes Job before the new pods start), or shows what is pending
with --dry-run. It works on the database the services use: PostgreSQL when
QUARRY_DATABASE_URL is set, else the SQLite files in the state directory. Running it
beside live services is safe: every migration is applied once, under one advisory lock.

The command sits above the services, so it gathers their schemas itself
(service_schemas); the state layer below only runs what it is given.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from quarry.admin_commands import CommandError
from quarry.cli_output import emit_json, emit_table, progress
from quarry.schema_migrations import MigrationStep
from quarry.service_database import STATEFUL_SERVICES, ServiceSchema, migrate_service
from quarry.settings import Settings
from quarry.state_database import DatabaseUnavailable, open_state_database

AddCommand = Callable[..., argparse.ArgumentParser]


def service_schemas() -> dict[str, ServiceSchema]:
    """Each stateful service's schema, by service, as its server applies it at start."""
    # Imported when the command runs: every process starts through quarry.cli, and the
    # gateway's or ingest's has no use for the services' stores.
    from config_service.store import SERVICE_SCHEMA as CONFIG
    from distributed_service.store import SERVICE_SCHEMA as DISTRIBUTED
    from enroll_service.store import SERVICE_SCHEMA as ENROLL

    return {schema.service: schema for schema in (ENROLL, CONFIG, DISTRIBUTED)}


def add_migrate_command(sub: argparse._SubParsersAction, add: AddCommand) -> None:
    """`quarry migrate`; `add` is cli._admin (adds --json)."""
    cmd = add(
        sub,
        "migrate",
        "apply the schema migrations of the services' state (SQLite files or"
        " QUARRY_DATABASE_URL); the services also apply them at start",
        migrate,
    )
    cmd.add_argument(
        "--service",
        choices=STATEFUL_SERVICES,
        action="append",
        help="only this service's state (repeatable; default: all three)",
    )
    cmd.add_argument(
        "--dry-run", action="store_true", help="show what is pending without applying it"
    )


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    steps: list[MigrationStep] = []
    schemas = service_schemas()
    for service in args.service or STATEFUL_SERVICES:
        try:
            database = open_state_database(settings, service)
        except DatabaseUnavailable as exc:
            raise CommandError(str(exc)) from None
        try:
            if not args.json:
                progress(f"{service}: {database.describe()}")
            steps += migrate_service(
                database,
                schemas[service],
                dry_run=args.dry_run,
                progress=None if args.json else _show_step,
            )
        finally:
            database.close()
    if args.json:
        emit_json({"dry_run": args.dry_run, "migrations": [s.as_dict() for s in steps]})
    else:
        rows = [(s.component, s.version, s.name, s.as_dict()["status"]) for s in steps]
        emit_table(("component", "version", "name", "status"), rows)
    return 0


def _show_step(step: MigrationStep) -> None:
    if step.applied:
        progress(f"{step.component}: applied {step.version} ({step.name})")
