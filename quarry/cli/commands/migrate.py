"""`quarry migrate`: apply the schema migrations of the enroll, config and distributed state.

The services apply their migrations themselves at start; this command does it ahead of
a rollout (e.g. a Kubernetes Job before the new pods start), or shows what is pending
with --dry-run. It works on the database the services use: PostgreSQL when
QUARRY_DATABASE_URL is set, else the SQLite files in the state directory. Running it
beside live services is safe: every migration is applied once, under one advisory lock.

quarry/ imports no service (docs/architecture.md), so each service's schema is applied by
the service's own entry point, `python -m PACKAGE migrate --json`
(quarry/serving/service_entry.py), run here one service after another; this command gathers their
reports into one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Callable

from quarry.cli.commands.admin import CommandError
from quarry.runtime.command_output import emit_json, emit_table, progress
from quarry.runtime.settings import Settings
from quarry.serving.service_entry import migration_table, service_command, show_step
from quarry.state.service_database import STATEFUL_SERVICES

AddCommand = Callable[..., argparse.ArgumentParser]


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
    if not settings.database_url and not settings.state_dir.is_dir():
        # Never made here: a mistyped --state-dir would become a new, empty state.
        raise CommandError(
            f"no state directory {settings.state_dir.resolve()}: give the --state-dir"
            " (QUARRY_STATE_DIR) the services use, or QUARRY_DATABASE_URL"
        )
    steps: list[dict] = []
    for service in args.service or STATEFUL_SERVICES:
        report = migrate_one(settings, service, args.dry_run)
        if not args.json:
            progress(f"{service}: {report['database']}")
            for step in report["migrations"]:
                show_step(step)
        steps += report["migrations"]
    if args.json:
        emit_json({"dry_run": args.dry_run, "migrations": steps})
    else:
        emit_table(*migration_table(steps))
    return 0


def migrate_one(settings: Settings, service: str, dry_run: bool) -> dict:
    """One service's report from its own entry point; CommandError when it could not run."""
    command = service_command(service, "migrate", "--json", *(["--dry-run"] if dry_run else []))
    # Its stderr is ours, so whatever it says on the way (a traceback) reaches the person.
    finished = subprocess.run(
        command, env={**os.environ, **settings.to_env()}, stdout=subprocess.PIPE, check=False
    )
    try:
        report = json.loads(finished.stdout)
    except ValueError:
        report = {}
    if not isinstance(report, dict):
        report = {}
    if "error" in report:
        raise CommandError(str(report["error"]))
    if finished.returncode != 0 or "migrations" not in report:
        raise CommandError(
            f"the {service} migrations did not run ({' '.join(command[1:])} exited with"
            f" {finished.returncode})"
        )
    return report
