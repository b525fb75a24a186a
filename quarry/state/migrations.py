"""Versioned schema migrations of the services' databases, on SQLite and PostgreSQL alike.

Each store lists its migrations in order (version 1, 2, ...); a migration names the
tables it creates or changes (quarry/state/table_schema.py renders their DDL for the
database's dialect), and may add SQL and a Python step. `schema_migrations`
records, per component, which versions a database holds; applying is idempotent: what
is recorded is skipped. Each migration runs in its own transaction under one advisory
lock shared by every service (MIGRATION_LOCK_KEY), so replicas starting together, or
`quarry migrate` running beside them, apply each migration exactly once. PostgreSQL runs
DDL inside transactions too, so a failed migration leaves nothing half done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quarry.state.database import (
    MIGRATION_LOCK_KEY,
    POSTGRESQL,
    SQLITE,
    StateDatabase,
    Transaction,
)
from quarry.state.table_schema import INTEGER, TEXT, Column, Table

HISTORY_TABLE = Table(
    "schema_migrations",
    (
        Column("component", TEXT),
        Column("version", INTEGER),
        Column("name", TEXT),
        Column("applied_at", INTEGER),
    ),
    primary_key=("component", "version"),
)


@dataclass(frozen=True)
class Migration:
    """One step of a component's schema: the DDL of its `tables` at this version (each
    table created, or given what came at this version: Table.statements), then SQL
    statements (`;`-separated), then an optional Python step for what SQL alone cannot
    say (e.g. upgrading a file made before migrations were versioned). `postgresql`
    replaces `sql` there when the dialects differ; `dialects` limits the migration to
    some backends."""

    version: int
    name: str
    tables: tuple[Table, ...] = ()
    sql: str = ""
    postgresql: str | None = None
    python: Callable[[Transaction, str], None] | None = None
    dialects: tuple[str, ...] = (SQLITE, POSTGRESQL)

    def statements(self, dialect: str) -> list[str]:
        ddl = [s for table in self.tables for s in table.statements(dialect, self.version)]
        text = (
            self.postgresql if dialect == POSTGRESQL and self.postgresql is not None else self.sql
        )
        return ddl + split_statements(text)


@dataclass(frozen=True)
class MigrationStep:
    """What migrate() did (or, with dry_run, would do) about one migration."""

    component: str
    version: int
    name: str
    applied: bool  # applied now
    already: bool  # was recorded before

    def as_dict(self) -> dict[str, object]:
        return {
            "component": self.component,
            "version": self.version,
            "name": self.name,
            "status": "already applied"
            if self.already
            else ("applied" if self.applied else "pending"),
        }


def split_statements(text: str) -> list[str]:
    """Statements of a script: comment lines dropped, split on `;`, blanks skipped."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(
    database: StateDatabase,
    component: str,
    migrations: Sequence[Migration],
    dry_run: bool = False,
    progress: Callable[[MigrationStep], None] | None = None,
) -> list[MigrationStep]:
    """Apply the migrations this database lacks, in order; returns one step per migration."""
    _check_order(component, migrations)
    steps = []
    for migration in migrations:
        if database.dialect not in migration.dialects:
            continue
        step = _apply_one(database, component, migration, dry_run)
        steps.append(step)
        if progress is not None:
            progress(step)
    return steps


class _DryRunDone(Exception):
    """Ends a dry run's transaction by rolling it back: DDL is transactional on SQLite and
    PostgreSQL alike, so even the history table a first run creates is not left behind."""

    def __init__(self, step: MigrationStep) -> None:
        self.step = step


def _apply_one(
    database: StateDatabase, component: str, migration: Migration, dry_run: bool
) -> MigrationStep:
    try:
        return _apply_in_transaction(database, component, migration, dry_run)
    except _DryRunDone as done:
        return done.step


def _apply_in_transaction(
    database: StateDatabase, component: str, migration: Migration, dry_run: bool
) -> MigrationStep:
    with database.transaction(lock_key=MIGRATION_LOCK_KEY) as tx:
        for statement in HISTORY_TABLE.create(database.dialect):
            tx.execute(statement)
        recorded = tx.execute(
            "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
            (component, migration.version),
        ).fetchone()
        if recorded or dry_run:
            step = MigrationStep(
                component, migration.version, migration.name, False, bool(recorded)
            )
            if dry_run:
                raise _DryRunDone(step)
            return step
        for statement in migration.statements(database.dialect):
            tx.execute(statement)
        if migration.python is not None:
            migration.python(tx, database.dialect)
        tx.execute(
            "INSERT INTO schema_migrations (component, version, name, applied_at)"
            " VALUES (?, ?, ?, ?)",
            (component, migration.version, migration.name, int(time.time())),
        )
    return MigrationStep(component, migration.version, migration.name, True, False)


def _check_order(component: str, migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{component}: migrations must be numbered 1, 2, ...; got {versions}")
