"""What a state directory remembers of the `quarry up` that runs on it: where it listens.

`quarry up` writes state_dir/cluster.json (quarry/state/directory.py) once it holds the
state directory: its port base and the settings an admin command needs to find the
cluster (every port, the bind and public host, whether gRPC runs mutual TLS), and its
pid. An admin command given the right `--state-dir` and nothing else then talks to that
cluster, not to whatever listens on the default ports (which would be sent this state
directory's admin token). `quarry up` itself reads the record's ports the same way when
it starts again, so a state directory's cluster comes back where its admin commands and
its osquery hosts (`quarry flags`) expect it. What the person sets explicitly wins:
`--port-base` or QUARRY_PORT_BASE replaces every recorded port, and any QUARRY_* variable
its recorded value; when an explicit port base differs from a running cluster's record, a
note on stderr says so, and `quarry up` says when it moves from the recorded ports or
returns to them (docs/cli.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from quarry.cli.up_processes import process_start_time
from quarry.runtime.file_writes import write_atomically
from quarry.runtime.settings import ENV_PREFIX, PORT_OFFSETS, Settings
from quarry.state.directory import CLUSTER_FILE, cluster_record_file

PORT_BASE_ENV = ENV_PREFIX + "PORT_BASE"
PORT_SETTINGS = tuple(PORT_OFFSETS)
# Beside the ports, what a command on this machine needs to reach the cluster's services.
REACH_SETTINGS = ("bind_host", "public_host", "internal_tls")


def write_record(settings: Settings, port_base: str | None, pid: int) -> Path:
    """Record the running cluster (called by `quarry up`, holding the state directory)."""
    recorded = {name: getattr(settings, name) for name in PORT_SETTINGS + REACH_SETTINGS}
    record = {
        "port_base": int(port_base) if port_base else None,
        "settings": {ENV_PREFIX + name.upper(): str(v) for name, v in recorded.items()},
        "pid": pid,
        "pid_started": process_start_time(pid),
    }
    path = cluster_record_file(settings)
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def read_record(state_dir: Path) -> dict | None:
    """The record in a state directory; None when there is none (or it is unreadable)."""
    try:
        record = json.loads((state_dir / CLUSTER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def apply_record(state_dir: Path, environ: MutableMapping[str, str] = os.environ) -> None:
    """Fill what the environment leaves unset from the state directory's record."""
    record = read_record(state_dir)
    if record is None:
        return
    explicit_base = environ.get(PORT_BASE_ENV)
    if explicit_base:
        _warn_on_mismatch(state_dir, record, explicit_base)
    _fill(record, environ, PORT_SETTINGS + REACH_SETTINGS)


def reuse_recorded_ports(
    state_dir: Path, environ: MutableMapping[str, str] = os.environ
) -> str | None:
    """For `quarry up`: listen where the record says, unless ports are given; the line to
    print when that moves the cluster from where the environment alone would put it, or
    when an explicit port base moves it from the recorded ports. Only the ports: the other
    settings are `quarry up`'s own environment, as on every start."""
    record = read_record(state_dir)
    if record is None or _running(record):  # a running one: `quarry up` refuses anyway
        return None
    explicit_base = environ.get(PORT_BASE_ENV)
    recorded = _listens(record.get("port_base"))
    if explicit_base:
        if str(record.get("port_base") or "") == explicit_base:
            return None
        return (
            f"quarry up: note: moving from {recorded}, where the last quarry up on"
            f" {state_dir} listened, to --port-base {explicit_base}; osquery's flags change"
            " with it (`quarry flags`)"
        )
    before = _ports(Settings.from_env(dict(environ)))
    _fill(record, environ, PORT_SETTINGS)
    if _ports(Settings.from_env(dict(environ))) == before:
        return None
    return (
        f"quarry up: listening on {recorded}, as the last quarry up on {state_dir} did"
        f" ({CLUSTER_FILE}); give --port-base to move"
    )


def _fill(record: dict, environ: MutableMapping[str, str], names: tuple[str, ...]) -> None:
    """Set the recorded values of `names` the environment leaves unset; with an explicit
    port base, no recorded port."""
    explicit_base = environ.get(PORT_BASE_ENV)
    port_vars = {ENV_PREFIX + name.upper() for name in PORT_SETTINGS}
    wanted = {ENV_PREFIX + name.upper() for name in names}
    for variable, value in (record.get("settings") or {}).items():
        if variable not in wanted or variable in environ:
            continue
        if explicit_base and variable in port_vars:
            continue
        environ[variable] = str(value)
    recorded_base = record.get("port_base")
    if recorded_base and not explicit_base:
        environ[PORT_BASE_ENV] = str(recorded_base)


def _ports(settings: Settings) -> tuple[int, ...]:
    return tuple(getattr(settings, name) for name in PORT_SETTINGS)


def _listens(port_base: object) -> str:
    return f"--port-base {port_base}" if port_base else "the default ports"


def _warn_on_mismatch(state_dir: Path, record: dict, explicit_base: str) -> None:
    recorded_base = record.get("port_base")
    if str(recorded_base or "") == explicit_base or not _running(record):
        return
    print(
        f"quarry: note: the quarry up running on {state_dir} (pid {record.get('pid')}) uses"
        f" {_listens(recorded_base)}; this command uses --port-base {explicit_base}",
        file=sys.stderr,
    )


def _running(record: dict) -> bool:
    pid, started = record.get("pid"), record.get("pid_started")
    return isinstance(pid, int) and bool(started) and process_start_time(pid) == started
