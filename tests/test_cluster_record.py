"""How `quarry up` and the admin commands read a state directory's cluster record
(quarry/cli/cluster_record.py): the same ports for both, explicit settings first.

Unit tests of the one module, on a record written by its own `write_record` in a scratch
state directory; tests/test_cli_operations.py runs the real `quarry up` on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from quarry.cli.cluster_record import apply_record, reuse_recorded_ports, write_record
from quarry.cli.up_processes import process_start_time
from quarry.runtime.settings import Settings

DEAD_PID = 2**22 + 1  # above pid_max's ceiling: no process has it


def recorded(state_dir: Path, port_base: int | None, pid: int = DEAD_PID) -> Settings:
    state_dir.mkdir(exist_ok=True)
    env = {"QUARRY_STATE_DIR": str(state_dir)}
    if port_base:
        env["QUARRY_PORT_BASE"] = str(port_base)
    settings = Settings.from_env(env)
    write_record(settings, env.get("QUARRY_PORT_BASE"), pid)
    return settings


def test_up_and_admin_commands_fill_the_same_ports_from_the_record(tmp_path: Path) -> None:
    recorded(tmp_path, 41000)
    for_up: dict[str, str] = {}
    for_admin: dict[str, str] = {}
    note = reuse_recorded_ports(tmp_path, for_up)
    apply_record(tmp_path, for_admin)
    assert Settings.from_env(for_up).gateway_port == 41000
    assert Settings.from_env(for_up).api_port == Settings.from_env(for_admin).api_port == 41006
    assert note is not None and "--port-base 41000" in note
    # Only the ports for `quarry up`: its other settings are its own environment's.
    assert "QUARRY_BIND_HOST" in for_admin and "QUARRY_BIND_HOST" not in for_up


def test_no_record_leaves_the_environment_as_it_is(tmp_path: Path) -> None:
    environ = {"QUARRY_STATE_DIR": str(tmp_path)}
    assert reuse_recorded_ports(tmp_path, environ) is None
    assert environ == {"QUARRY_STATE_DIR": str(tmp_path)}


def test_a_record_of_the_default_ports_changes_nothing_and_says_nothing(tmp_path: Path) -> None:
    recorded(tmp_path, None)
    environ: dict[str, str] = {}
    assert reuse_recorded_ports(tmp_path, environ) is None
    assert Settings.from_env(environ).gateway_port == Settings().gateway_port


def test_an_explicit_port_wins_over_the_record(tmp_path: Path) -> None:
    recorded(tmp_path, 41000)
    base = {"QUARRY_PORT_BASE": "42000"}
    note = reuse_recorded_ports(tmp_path, base)
    assert Settings.from_env(base).gateway_port == 42000
    assert note is not None and "moving from --port-base 41000" in note
    one = {"QUARRY_API_PORT": "45000"}
    reuse_recorded_ports(tmp_path, one)
    settings = Settings.from_env(one)
    assert (settings.api_port, settings.gateway_port) == (45000, 41000)
    same = {"QUARRY_PORT_BASE": "41000"}
    assert reuse_recorded_ports(tmp_path, same) is None


def test_the_record_of_a_running_up_is_left_to_its_lock(tmp_path: Path) -> None:
    """A second `quarry up` on a running one's directory is refused in one line by the
    lock (quarry/cli/supervisor.py), so nothing is printed before it."""
    assert process_start_time(os.getpid())
    recorded(tmp_path, 41000, pid=os.getpid())
    assert reuse_recorded_ports(tmp_path, {"QUARRY_PORT_BASE": "42000"}) is None
