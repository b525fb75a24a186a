"""The `quarry` command's surface: every command has --help, every admin command --json."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quarry.cli import build_parser

ADMIN_COMMANDS = [
    ["sql", "SELECT 1"],
    ["config", "set", "-f", "x.json"],
    ["config", "show"],
    ["nodes", "list"],
    ["nodes", "revoke", "n"],
    ["query", "run", "SELECT 1"],
    ["query", "show", "q"],
    ["query", "list"],
    ["query", "cancel", "q"],
    ["flags"],
]


def quarry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quarry", *args], capture_output=True, text=True, timeout=60
    )


HELP_COMMANDS = [
    [], ["up"], ["serve"], ["sql"], ["config"], ["config", "set"], ["config", "show"],
    ["nodes"], ["nodes", "list"], ["nodes", "revoke"], ["query"], ["query", "run"],
    ["query", "show"], ["query", "list"], ["query", "cancel"], ["flags"],
]  # fmt: skip


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "quarry")
def test_every_command_has_help(command: list[str]) -> None:
    result = quarry(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: quarry" in result.stdout


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_admin_command_takes_json(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--json"])
    assert args.json is True


def test_an_unreachable_service_is_a_clear_one_line_error(tmp_path) -> None:
    result = quarry("--state-dir", str(tmp_path), "--port-base", "1", "nodes", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("quarry nodes: UNAVAILABLE")
    assert "Traceback" not in result.stderr


def test_flags_name_the_ca_and_the_secret(tmp_path) -> None:
    result = quarry("--state-dir", str(tmp_path), "--port-base", "41000", "flags")
    assert result.returncode == 0, result.stderr
    flags = result.stdout.splitlines()
    assert "--tls_hostname=localhost:41000" in flags
    assert f"--tls_server_certs={tmp_path / 'tls' / 'ca.pem'}" in flags
    assert "--config_tls_endpoint=/api/v1/osquery/config" in flags
