"""The state tables described once (quarry/state/table_schema.py) create the same tables as the
DDL the stores wrote out per dialect before (tests/schema_reference.py), on SQLite and on
a real PostgreSQL; a database made by that DDL is already up to date for the new code.

Tables are compared as the databases describe them: SQLite's table_xinfo (declared types
by affinity), index lists and CHECK clauses; PostgreSQL's information_schema columns,
constraints, check definitions, pg_indexes and sequences.
"""

from __future__ import annotations

import importlib
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from quarry.runtime.settings import Settings
from quarry.serving.service_entry import SERVICE_PACKAGES
from quarry.state.database import POSTGRESQL, SQLITE, StateDatabase, open_state_database
from quarry.state.migrations import split_statements
from quarry.state.service_database import STATEFUL_SERVICES, ServiceSchema, migrate_service
from quarry.state.table_schema import INTEGER, SERIAL, TEXT, Column, Index, Table
from tests import schema_reference
from tests.conftest import STATE_BACKENDS
from tests.postgres_server import fresh_database


def service_schemas() -> dict[str, ServiceSchema]:
    """Each stateful service's schema, by the service it names, as its entry point applies
    it (`python -m PACKAGE migrate`, which `quarry migrate` runs; quarry/ imports none)."""
    mains = [importlib.import_module(f"{SERVICE_PACKAGES[s]}.__main__") for s in STATEFUL_SERVICES]
    return {main.SERVICE_SCHEMA.service: main.SERVICE_SCHEMA for main in mains}


# --- what each database says about its tables -------------------------------------------


def sqlite_affinity(declared: str) -> str:
    """SQLite's type affinity of a declared type (its documented rules, in order)."""
    name = declared.upper()
    if "INT" in name:
        return "INTEGER"
    if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in name or not name:
        return "BLOB"
    if any(word in name for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def sqlite_tables(path: Path) -> dict[str, Any]:
    db = sqlite3.connect(path)
    try:
        tables: dict[str, Any] = {}
        for name, sql in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"):
            columns = [
                (c[1], sqlite_affinity(c[2]), c[3], c[4], c[5])
                for c in db.execute(f"PRAGMA table_xinfo({name})")
            ]
            indexes = sorted(
                (index, unique, origin, [r[2] for r in db.execute(f"PRAGMA index_info({index})")])
                for _, index, unique, origin, _ in db.execute(f"PRAGMA index_list({name})")
            )
            body = re.sub(r"--[^\n]*", "", sql)
            tables[name] = {
                "columns": columns,
                "indexes": indexes,
                "checks": sorted(re.findall(r"CHECK\s*\([^)]*\)", body)),
                "autoincrement": "AUTOINCREMENT" in body.upper(),
            }
        return tables
    finally:
        db.close()


POSTGRES_QUERIES = {
    "columns": "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
    " column_default FROM information_schema.columns WHERE table_schema = 'public'",
    "constraints": "SELECT tc.table_name, tc.constraint_name, tc.constraint_type,"
    " string_agg(k.column_name, ',' ORDER BY k.ordinal_position)"
    " FROM information_schema.table_constraints tc"
    " LEFT JOIN information_schema.key_column_usage k"
    " ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema"
    " WHERE tc.table_schema = 'public' AND tc.constraint_type <> 'CHECK' GROUP BY 1, 2, 3",
    "checks": "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE contype = 'c' AND connamespace = 'public'::regnamespace",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "sequences": "SELECT sequence_name, data_type FROM information_schema.sequences"
    " WHERE sequence_schema = 'public'",
}


def postgres_tables(database: StateDatabase) -> dict[str, list[tuple[Any, ...]]]:
    return {
        what: sorted(tuple(row) for row in database.execute(sql))
        for what, sql in POSTGRES_QUERIES.items()
    }


def described(database: StateDatabase) -> Any:
    if database.dialect == SQLITE:
        return sqlite_tables(database.path)  # type: ignore[attr-defined]
    return postgres_tables(database)


# --- the two ways of making a database ----------------------------------------------------


def reference_database(database: StateDatabase, service: str) -> None:
    """The service's tables as the earlier stores made them, with the history they
    recorded."""
    column = 2 if database.dialect == SQLITE else 3
    with database.transaction() as tx:
        tx.execute(schema_reference.HISTORY_TABLE)
        for component, migrations in schema_reference.REFERENCE[service]:
            for migration in migrations:
                script = migration[column]
                if script is None:
                    continue
                for statement in split_statements(script):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO schema_migrations (component, version, name, applied_at)"
                    " VALUES (?, ?, ?, ?)",
                    (component, migration[0], migration[1], int(time.time())),
                )


def open_database(settings: Settings, service: str, backend: str) -> StateDatabase:
    database = open_state_database(settings, service)
    assert database.dialect == backend
    return database


@pytest.fixture(params=STATE_BACKENDS)
def two_settings(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[Settings]]:
    """Settings of two empty state databases of one backend."""
    found = []
    for side in ("reference", "rendered"):
        env = {"QUARRY_STATE_DIR": str(tmp_path / side)}
        (tmp_path / side).mkdir()
        if request.param == POSTGRESQL:
            env["QUARRY_DATABASE_URL"] = fresh_database(request.getfixturevalue("postgres_url"))
        found.append(Settings.from_env(env))
    return request.param, found


def reference_steps() -> dict[str, list[tuple[str, int, str]]]:
    return {
        service: [(c, m[0], m[1]) for c, migrations in components for m in migrations]
        for service, components in schema_reference.REFERENCE.items()
    }


@pytest.mark.parametrize("service", STATEFUL_SERVICES)
def test_rendered_tables_equal_the_earlier_ddl_and_its_databases_need_nothing(
    two_settings: tuple[str, list[Settings]], service: str
) -> None:
    backend, (reference_settings, rendered_settings) = two_settings
    schema = service_schemas()[service]
    old = open_database(reference_settings, service, backend)
    new = open_database(rendered_settings, service, backend)
    try:
        reference_database(old, service)
        applied = migrate_service(new, schema)
        assert described(new) == described(old)
        # Same components, versions and names, so a database migrated before has nothing
        # to apply, and its tables are those of a fresh one.
        expected = [
            step
            for step in reference_steps()[service]
            if backend == POSTGRESQL or not step[0].endswith(".changes")
        ]
        assert [(s.component, s.version, s.name) for s in applied] == expected
        assert all(s.applied for s in applied)
        again = migrate_service(old, schema)
        assert [(s.component, s.version, s.applied, s.already) for s in again] == [
            (component, version, False, True) for component, version, _ in expected
        ]
        assert described(old) == described(new)
    finally:
        old.close()
        new.close()


def test_migrate_gathers_every_stateful_service() -> None:
    assert tuple(service_schemas()) == STATEFUL_SERVICES
    assert {
        s: [c.name for c in schema.with_outbox()] for s, schema in service_schemas().items()
    } == {
        service: [component for component, _ in components]
        for service, components in schema_reference.REFERENCE.items()
    }


# --- rendering, on its own ----------------------------------------------------------------

TOKENS = Table(
    "tokens",
    (
        Column("id", SERIAL),
        Column("name", TEXT, unique=True),
        Column("note", TEXT, nullable=True, default="it's"),
        Column("expires_at", INTEGER, default=0, since=2),
    ),
    primary_key=("id",),
    indexes=(Index("tokens_by_expiry", ("expires_at", "name"), since=2),),
)


def test_a_table_renders_per_dialect_and_per_version() -> None:
    assert TOKENS.statements(SQLITE, 1) == [
        "CREATE TABLE IF NOT EXISTS tokens (\n"
        "    id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "    name TEXT NOT NULL UNIQUE,\n"
        "    note TEXT DEFAULT 'it''s'\n"
        ")"
    ]
    assert TOKENS.statements(POSTGRESQL, 2) == [
        "ALTER TABLE tokens ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS tokens_by_expiry ON tokens (expires_at, name)",
    ]
    assert TOKENS.create(POSTGRESQL)[0].splitlines()[1:2] == ["    id BIGSERIAL PRIMARY KEY,"]
    with pytest.raises(ValueError, match="nothing new at version 3"):
        TOKENS.statements(SQLITE, 3)
    with pytest.raises(ValueError, match="unknown or repeated"):
        Table("broken", (Column("a", TEXT),), indexes=(Index("broken_b", ("b",)),))
    with pytest.raises(ValueError, match="needs a default"):
        Table("broken", (Column("a", TEXT), Column("b", TEXT, since=2)))
    with pytest.raises(ValueError, match="SERIAL is for the sole key"):
        Table("broken", (Column("a", TEXT), Column("n", SERIAL)), primary_key=("a",))


def test_a_table_created_then_changed_equals_the_table_created_whole(tmp_path: Path) -> None:
    """Version 1 then 2 on one file, everything at once on another: same table."""
    stepwise, whole = tmp_path / "stepwise.sqlite3", tmp_path / "whole.sqlite3"
    for path, scripts in (
        (stepwise, TOKENS.statements(SQLITE, 1) + TOKENS.statements(SQLITE, 2)),
        (whole, TOKENS.create(SQLITE)),
    ):
        db = sqlite3.connect(path)
        for statement in scripts:
            db.execute(statement)
        db.close()
    assert sqlite_tables(stepwise) == sqlite_tables(whole)
    assert "expires_at" in str(sqlite_tables(whole))


@pytest.mark.parametrize(
    "service, first_release",
    [
        ("enroll", schema_reference.ENROLL_SQLITE),
        ("config", schema_reference.CONFIG_SQLITE),
        ("distributed", schema_reference.DISTRIBUTED_SQLITE),
    ],
)
def test_an_unversioned_sqlite_file_is_upgraded_to_the_rendered_tables(
    tmp_path: Path, service: str, first_release: str
) -> None:
    """A file from before migrations were versioned: its first-release tables get the
    later columns from the table descriptions, and end up as a fresh file's."""
    (tmp_path / "old").mkdir()
    (tmp_path / "fresh").mkdir()
    old_file = sqlite3.connect(tmp_path / "old" / f"{service}.sqlite3")
    old_file.executescript(first_release)
    old_file.close()
    schema = service_schemas()[service]
    found = []
    for side in ("old", "fresh"):
        database = open_state_database(Settings(state_dir=tmp_path / side), service)
        try:
            migrate_service(database, schema)
            found.append(described(database))
        finally:
            database.close()
    assert found[0] == found[1]
