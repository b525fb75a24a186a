"""Every `quarry` command's --help, found by walking the parser: it exits 0 with clean text,
and every admin command takes --json. Also `quarry --version`, and the SQL text rules of
`quarry sql` (one statement; ClickHouse's message on one line, from a real server)."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from quarry.cli.main import build_parser, package_version
from quarry.runtime.sql_text import error_line, statements

# Commands that run processes rather than administer a cluster: no --json.
NOT_ADMIN = {("up",), ("serve",)}


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) below parser, itself included; aliases once."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield from walk(child, (*path, name))


COMMANDS = list(walk(build_parser()))
LEAVES = [
    (path, parser)
    for path, parser in COMMANDS
    if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
]


def help_of(path: tuple[str, ...]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*path, "--help"])
    return int(exited.value.code or 0), out.getvalue()


def test_the_walk_finds_the_whole_tree() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {("carve", "start"), ("tls", "internal", "init"), ("config", "rollout", "status")} <= (
        paths
    )
    assert len(LEAVES) > 40


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "quarry")
def test_every_help_exits_0_with_clean_text(path: tuple[str, ...]) -> None:
    code, text = help_of(path)
    assert code == 0
    assert text.startswith(f"usage: quarry {' '.join(path)}".rstrip())
    for leftover in ("{'", "%(", "Traceback", "None"):
        assert leftover not in text, f"{leftover!r} in the help of {' '.join(path)}:\n{text}"


@pytest.mark.parametrize(
    "path", [p for p, _ in LEAVES if p not in NOT_ADMIN], ids=lambda p: " ".join(p)
)
def test_every_admin_command_takes_json(path: tuple[str, ...]) -> None:
    parser = dict(COMMANDS)[path]
    assert "--json" in {option for a in parser._actions for option in a.option_strings}
    assert parser.get_default("handler") is not None


def test_a_literal_percent_in_help_is_printed_as_one() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quarry", "carve", "start", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "% and _ make it a LIKE pattern" in " ".join(result.stdout.split())


def test_version_comes_from_the_package_metadata() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quarry", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"quarry {package_version()}"
    assert package_version()[0].isdigit()


# --- SQL text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("SELECT 1", 1),
        ("SELECT 1;", 1),
        ("SELECT 1; SELECT 2", 2),
        ("SELECT 1;;\n ; -- nothing\n", 1),
        ("SELECT ';' AS a, 'it''s; ok', 'x\\';y'", 1),
        ('SELECT 1 AS "a;b", 2 AS `c;d`', 1),
        ("SELECT 1 /* ; /* nested ; */ ; */", 1),
        ("SELECT 1 # ;\n", 1),
        ("", 0),
        ("-- only a comment", 0),
    ],
)
def test_statements_are_split_where_clickhouse_would(sql: str, count: int) -> None:
    assert len(statements(sql)) == count


def test_a_server_error_is_its_message_on_one_line(clickhouse_url: str) -> None:
    # The server's own database: quarry's exists only once a cluster has created it.
    client = Client.from_url(clickhouse_url.rsplit("/", 1)[0] + "/default")
    try:
        with pytest.raises(ServerException) as raised:
            client.execute("SELEC 1")
    finally:
        client.disconnect()
    assert "\n" in str(raised.value)  # as the driver gives it, with its stack trace
    line = error_line(str(raised.value))
    assert "\n" not in line and "Stack trace" not in line
    assert "Syntax error" in line
