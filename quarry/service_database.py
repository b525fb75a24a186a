"""A stateful service's database at start-up: opened, migrated, ready for its stores.

Each service lists its schema components here by module (the module's MIGRATIONS), so
`quarry serve` and `quarry migrate` apply the same migrations; on PostgreSQL the change
outbox (quarry/change_log.py) is one more component.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence

from quarry import change_log
from quarry.schema_migrations import Migration, MigrationStep, migrate
from quarry.settings import Settings
from quarry.state_database import DatabaseUnavailable, StateDatabase, open_state_database

log = logging.getLogger(__name__)

# service -> (component, module holding its MIGRATIONS), in the order they are applied.
SCHEMA_COMPONENTS = {
    "enroll": (
        ("enroll.nodes", "enroll_service.store"),
        ("enroll.admin_tokens", "enroll_service.admin_tokens"),
    ),
    "config": (("config", "config_service.store"),),
    "distributed": (("distributed", "distributed_service.store"),),
}
STATEFUL_SERVICES = tuple(SCHEMA_COMPONENTS)


def components(service: str) -> list[tuple[str, Sequence[Migration]]]:
    """(component, its migrations) of the service, the change outbox first."""
    found: list[tuple[str, Sequence[Migration]]] = [(f"{service}.changes", change_log.MIGRATIONS)]
    for component, module in SCHEMA_COMPONENTS[service]:
        found.append((component, importlib.import_module(module).MIGRATIONS))
    return found


def migrate_service(
    database: StateDatabase,
    service: str,
    dry_run: bool = False,
    progress: Callable[[MigrationStep], None] | None = None,
) -> list[MigrationStep]:
    steps: list[MigrationStep] = []
    for component, migrations in components(service):
        steps += migrate(database, component, migrations, dry_run=dry_run, progress=progress)
    return steps


def open_service_database(settings: Settings, service: str) -> StateDatabase:
    """The service's database with every migration applied (each at most once)."""
    try:
        database = open_state_database(settings, service)
    except DatabaseUnavailable as exc:
        # Exit: `quarry up` or Kubernetes starts the service again, with backoff.
        log.error("%s; the %s service cannot start without its state", exc, service)
        raise SystemExit(1) from None
    for step in migrate_service(database, service):
        if step.applied:
            log.info("%s: applied migration %d (%s)", step.component, step.version, step.name)
    log.info("%s state in %s", service, database.describe())
    return database
