"""Tables of the services' state, each described once and rendered as SQLite or PostgreSQL DDL.

A store declares its tables as `Table`s (columns of a few portable types, primary key,
unique columns, checks, defaults, indexes) and its migrations name them
(quarry/state/migrations.py); the DDL each backend runs is rendered from that one
description. The types are what the stores need, with the dialects' differences in one
place: PostgreSQL's INTEGER is 32 bits, so integers are BIGINT there; SQLite's
`INTEGER PRIMARY KEY AUTOINCREMENT` is PostgreSQL's BIGSERIAL (ADR 0009).

A column or an index added by a later migration says so with `since`: migration 1 of a
table creates it as it was then, and migration N adds what came at N (ALTER TABLE ADD
COLUMN, CREATE INDEX), so a database migrated by an older Quarry and a fresh one end up
with the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from quarry.state.database import POSTGRESQL, SQLITE


@dataclass(frozen=True)
class ColumnType:
    """A portable column type: its name in each dialect."""

    sqlite: str
    postgresql: str

    def render(self, dialect: str) -> str:
        return self.postgresql if dialect == POSTGRESQL else self.sqlite


TEXT = ColumnType("TEXT", "TEXT")
# 64 bits on both (SQLite's INTEGER is up to 8 bytes; PostgreSQL's is 4).
INTEGER = ColumnType("INTEGER", "BIGINT")
BLOB = ColumnType("BLOB", "BYTEA")
# A 64-bit number the database assigns, increasing and never reused: as the primary key,
# SQLite's INTEGER PRIMARY KEY AUTOINCREMENT.
SERIAL = ColumnType("INTEGER", "BIGSERIAL")


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False
    unique: bool = False
    default: int | str | None = None
    # A condition on the column's value, in SQL both dialects read, e.g. "id = 1".
    check: str | None = None
    # The table's migration that added the column (1: it was there from the start).
    since: int = 1

    def render(self, dialect: str, primary_key: bool = False) -> str:
        """The column's definition; `primary_key` when it alone is the table's key."""
        parts = [self.name, self.type.render(dialect)]
        if primary_key:
            # No NOT NULL: PostgreSQL implies it, and SQLite's tables never said it.
            parts.append("PRIMARY KEY")
            if self.type is SERIAL and dialect == SQLITE:
                parts.append("AUTOINCREMENT")
        elif not self.nullable:
            parts.append("NOT NULL")
        if self.unique:
            parts.append("UNIQUE")
        if self.default is not None:
            parts.append(f"DEFAULT {sql_literal(self.default)}")
        if self.check is not None:
            parts.append(f"CHECK ({self.check})")
        return " ".join(parts)


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    since: int = 1

    def render(self, table: str) -> str:
        return f"CREATE INDEX IF NOT EXISTS {self.name} ON {table} ({', '.join(self.columns)})"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    indexes: tuple[Index, ...] = ()
    # Rows keep their insertion order in `rowid`: SQLite gives every table that column
    # implicitly; on PostgreSQL it is a BIGSERIAL column of its own, the first one.
    rowid: bool = False

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        unknown = {*self.primary_key, *(n for i in self.indexes for n in i.columns)} - {*names}
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: unknown or repeated columns {sorted(unknown)}")
        for column in self.columns:
            if column.type == SERIAL and self.primary_key != (column.name,):
                # SQLite numbers only its INTEGER PRIMARY KEY by itself.
                raise ValueError(f"{self.name}.{column.name}: SERIAL is for the sole key")
            if column.since > self.first_version and not self._addable(column):
                raise ValueError(f"{self.name}.{column.name}: ADD COLUMN needs a default")

    def _addable(self, column: Column) -> bool:
        """What ALTER TABLE ADD COLUMN can add to a table with rows, on both dialects."""
        keyed = column.unique or column.name in self.primary_key
        return not keyed and (column.nullable or column.default is not None)

    @property
    def first_version(self) -> int:
        return min(c.since for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def statements(self, dialect: str, version: int) -> list[str]:
        """What this table's migration `version` runs: the table as it was then (its
        first version), or the columns and indexes that came at `version`."""
        if version == self.first_version:
            return self.create(dialect, version)
        added = [self.add_column(c.name, dialect) for c in self.columns if c.since == version]
        added += [i.render(self.name) for i in self.indexes if i.since == version]
        if not added:
            raise ValueError(f"table {self.name} has nothing new at version {version}")
        return added

    def create(self, dialect: str, version: int | None = None) -> list[str]:
        """CREATE TABLE and CREATE INDEX statements of the table as of `version` (default:
        with everything)."""
        columns = [c for c in self.columns if version is None or c.since <= version]
        inline_key = len(self.primary_key) == 1
        lines = [c.render(dialect, inline_key and c.name == self.primary_key[0]) for c in columns]
        if self.rowid and dialect == POSTGRESQL:
            lines.insert(0, f"rowid {SERIAL.postgresql}")
        if len(self.primary_key) > 1:
            lines.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        body = ",\n    ".join(lines)
        table = f"CREATE TABLE IF NOT EXISTS {self.name} (\n    {body}\n)"
        indexes = [i for i in self.indexes if version is None or i.since <= version]
        return [table, *(i.render(self.name) for i in indexes)]

    def add_column(self, name: str, dialect: str) -> str:
        """ALTER TABLE adding one column (the column must allow it: a default, no key)."""
        return f"ALTER TABLE {self.name} ADD COLUMN {self.column(name).render(dialect)}"


def sql_literal(value: int | str) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"
