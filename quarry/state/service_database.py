"""A stateful service's database at start-up: opened, migrated, ready for its stores.

Each service passes in its schema (a ServiceSchema: its components, each with its
store's MIGRATIONS), from its server at start and from `quarry migrate`, which gathers
every service's (quarry/cli/commands/migrate.py); quarry/ itself never imports a service. On
PostgreSQL the change outbox (quarry/state/change_log.py) is one more component.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quarry.runtime.settings import Settings
from quarry.state import change_log
from quarry.state.database import (
    SERVICE_LOCK_KEYS,
    DatabaseUnavailable,
    StateDatabase,
    open_state_database,
)
from quarry.state.migrations import Migration, MigrationStep, migrate

log = logging.getLogger(__name__)

# The services that keep state: each has its database (SQLite file) and write lock.
STATEFUL_SERVICES = tuple(SERVICE_LOCK_KEYS)


@dataclass(frozen=True)
class SchemaComponent:
    """Tables of one concern and their migrations; `name` is what schema_migrations
    records, so it never changes (e.g. "enroll.nodes")."""

    name: str
    migrations: Sequence[Migration]


@dataclass(frozen=True)
class ServiceSchema:
    """What a stateful service keeps in its database: its components, applied in order."""

    service: str
    components: tuple[SchemaComponent, ...]

    def __post_init__(self) -> None:
        if self.service not in SERVICE_LOCK_KEYS:
            raise ValueError(f"{self.service} is not a stateful service")

    def with_outbox(self) -> list[SchemaComponent]:
        """The components to migrate: the change outbox first, then the service's."""
        outbox = SchemaComponent(f"{self.service}.changes", change_log.MIGRATIONS)
        return [outbox, *self.components]


def migrate_service(
    database: StateDatabase,
    schema: ServiceSchema,
    dry_run: bool = False,
    progress: Callable[[MigrationStep], None] | None = None,
) -> list[MigrationStep]:
    steps: list[MigrationStep] = []
    for component in schema.with_outbox():
        steps += migrate(
            database, component.name, component.migrations, dry_run=dry_run, progress=progress
        )
    return steps


def open_service_database(settings: Settings, schema: ServiceSchema) -> StateDatabase:
    """The service's database with every migration applied (each at most once)."""
    service = schema.service
    try:
        database = open_state_database(settings, service)
    except DatabaseUnavailable as exc:
        # Exit: `quarry up` or Kubernetes starts the service again, with backoff.
        log.error("%s; the %s service cannot start without its state", exc, service)
        raise SystemExit(1) from None
    for step in migrate_service(database, schema):
        if step.applied:
            log.info("%s: applied migration %d (%s)", step.component, step.version, step.name)
    log.info("%s state in %s", service, database.describe())
    return database
