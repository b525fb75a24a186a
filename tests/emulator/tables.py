"""A tiny SQL executor for distributed queries, answering from a `HostProfile`.

It understands only what tests and the benchmark send:

    SELECT * | item [, item ...] [FROM table [CROSS JOIN table USING (column)]
        [WHERE cond [AND cond ...]]] [;]

where an item is a column, `count(*)`/`count(1)`, or a number/'string' literal, each with an
optional `AS alias`, and a cond is `column = | != | <> literal`, `column IN (literal, ...)`
or a bare `true`/`false`/`1`/`0`. Tables are the ones `HostProfile.table` knows (osquery_info,
system_info, os_version, platform_info, processes, users, uptime, the vitals and package
tables of docs/inventory.md). Results are lists of string-valued rows whose keys follow the
SELECT order, as osquery's distributed results are (spec §9.3).

Anything else fails the way osquery reports SQLite errors: `no such table: X`,
`no such column: X`, or `near "X": syntax error`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.emulator.host_profile import HostProfile

_QUERY = re.compile(
    r"^\s*select\s+(?P<items>.+?)"
    r"(?:\s+from\s+(?P<table>\w+)"
    r"(?:\s+cross\s+join\s+(?P<joined>\w+)\s+using\s*\(\s*(?P<using>\w+)\s*\))?)?"
    r"(?:\s+where\s+(?P<where>.+?))?\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_ALIAS = re.compile(r"^(?P<expr>.+?)\s+as\s+(?P<alias>\w+)$", re.IGNORECASE)
_COUNT = re.compile(r"^count\(\s*(\*|1)\s*\)$", re.IGNORECASE)
_LITERAL = re.compile(r"^(?:-?\d+(?:\.\d+)?|'(?:[^']|'')*')$")
_CONDITION = re.compile(r"^(?P<column>\w+)\s*(?P<op>=|==|!=|<>)\s*(?P<value>.+)$")
_IN = re.compile(r"^(?P<column>\w+)\s+in\s*\((?P<values>.+)\)$", re.IGNORECASE)
_IDENTIFIER = re.compile(r"^\w+$")


@dataclass(frozen=True)
class QueryOutcome:
    """What running one query gave: rows on success, or osquery's error message."""

    rows: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class SqlSyntaxError(Exception):
    """The query is outside the tiny grammar; the message is osquery/SQLite's wording."""


class TableExecutor:
    """Runs emulator SQL against one host; call it like a function with the SQL text."""

    def __init__(self, host: HostProfile) -> None:
        self.host = host

    def __call__(self, sql: str) -> QueryOutcome:
        try:
            return QueryOutcome(rows=self._run(sql))
        except SqlSyntaxError as error:
            return QueryOutcome(error=str(error))

    def _run(self, sql: str) -> list[dict[str, str]]:
        match = _QUERY.match(sql)
        if match is None:
            raise SqlSyntaxError(f'near "{_first_word(sql)}": syntax error')
        table = match["table"]
        rows = self._table_rows(table)
        if match["joined"]:
            rows = _join(rows, self._table_rows(match["joined"]), match["using"])
        if match["where"]:
            rows = [row for row in rows if _matches_all(row, match["where"])]
        items = [item.strip() for item in match["items"].split(",")]
        if items == ["*"]:
            if table is None:
                raise SqlSyntaxError("no tables specified")
            return [dict(row) for row in rows]
        return _project(rows, items, counting=any(_COUNT.match(_strip_alias(i)) for i in items))

    def _table_rows(self, table: str | None) -> list[dict[str, str]]:
        if table is None:
            return [{}]  # SELECT without FROM yields one row of literals
        rows = self.host.table(table.lower())
        if rows is None:
            raise SqlSyntaxError(f"no such table: {table}")
        return rows


def _project(rows: list[dict[str, str]], items: list[str], counting: bool) -> list[dict[str, str]]:
    if counting:
        if len(items) != 1:
            raise SqlSyntaxError("emulator: count() cannot be mixed with other columns")
        return [{_output_name(items[0]): str(len(rows))}]
    return [
        {_output_name(item): _evaluate(row, _strip_alias(item)) for item in items} for row in rows
    ]


def _output_name(item: str) -> str:
    alias = _ALIAS.match(item)
    return alias["alias"] if alias else item


def _strip_alias(item: str) -> str:
    alias = _ALIAS.match(item)
    return alias["expr"].strip() if alias else item


def _evaluate(row: dict[str, str], expression: str) -> str:
    if _LITERAL.match(expression):
        return _literal_value(expression)
    if not _IDENTIFIER.match(expression):
        raise SqlSyntaxError(f'near "{_first_word(expression)}": syntax error')
    if expression not in row:
        raise SqlSyntaxError(f"no such column: {expression}")
    return row[expression]


def _matches_all(row: dict[str, str], where: str) -> bool:
    conditions = re.split(r"\s+and\s+", where.strip(), flags=re.IGNORECASE)
    return all(_matches(row, condition.strip()) for condition in conditions)


def _join(left: list[dict[str, str]], right: list[dict[str, str]], column: str) -> list[dict]:
    """CROSS JOIN ... USING (column): each pair agreeing on the column, right's columns last."""
    return [
        {**a, **b}
        for a in left
        for b in right
        if column in a and column in b and _same_value(a[column], b[column])
    ]


def _matches(row: dict[str, str], condition: str) -> bool:
    if condition.lower() in ("true", "1"):
        return True
    if condition.lower() in ("false", "0"):
        return False
    listed = _IN.match(condition)
    if listed is not None:
        values = [value.strip() for value in listed["values"].split(",")]
        if not all(_LITERAL.match(value) for value in values):
            raise SqlSyntaxError(f'near "{_first_word(condition)}": syntax error')
        if listed["column"] not in row:
            raise SqlSyntaxError(f"no such column: {listed['column']}")
        return any(_same_value(row[listed["column"]], _literal_value(v)) for v in values)
    match = _CONDITION.match(condition)
    if match is None or not _LITERAL.match(match["value"].strip()):
        raise SqlSyntaxError(f'near "{_first_word(condition)}": syntax error')
    column = match["column"]
    if column not in row:
        raise SqlSyntaxError(f"no such column: {column}")
    equal = _same_value(row[column], _literal_value(match["value"].strip()))
    return equal if match["op"] in ("=", "==") else not equal


def _same_value(column_value: str, literal: str) -> bool:
    try:
        return float(column_value) == float(literal)  # osquery's INTEGER columns compare as numbers
    except ValueError:
        return column_value == literal


def _literal_value(literal: str) -> str:
    if literal.startswith("'"):
        return literal[1:-1].replace("''", "'")
    return literal


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""
