"""`quarry up`'s processes on real processes: its children die with it even under kill -9,
the next `quarry up` stops what a killed one left running, and a second one on a running
cluster's state directory or ports is refused with one line (docs/faults.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quarry.cli.up_processes import Recorded, process_start_time, write_pid_file
from quarry.state.directory import UP_PID_FILE as PID_FILE
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

# Children stop as after Ctrl-C (SIGTERM): ingest flushes, the gateway drains.
EXIT_TIMEOUT_S = 60.0


def descendants(root: int) -> dict[int, int]:
    """Every process below root (children, their children...): pid -> start time."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found: dict[int, int] = {}
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = process_start_time(pid)
        todo.extend(parents.get(pid, []))
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    return [pid for pid, started in processes.items() if process_start_time(pid) == started]


def new_cluster(tmp_path: Path) -> QuarryCluster:
    cluster = QuarryCluster(
        state_dir=tmp_path / "state",
        port_base=free_port_base(),
        clickhouse_url="",
        output=tmp_path / "quarry-up.log",
    )
    cluster.output.touch()
    return cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path) as running:
        yield running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_every_child_exits_when_quarry_up_is_killed(cluster: QuarryCluster) -> None:
    assert cluster.process is not None
    children = descendants(cluster.process.pid)
    assert len(children) >= 5  # the five services, and whatever they started
    os.kill(cluster.process.pid, signal.SIGKILL)
    cluster.process.wait()
    assert eventually(lambda: not still_running(children), timeout_s=EXIT_TIMEOUT_S), still_running(
        children
    )


def test_a_second_quarry_up_is_refused_in_one_line_and_the_first_carries_on(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    assert cluster.process is not None
    enroll = cluster.service_pid("enroll")
    same_state_dir = cluster.cli("up", check=False)
    assert same_state_dir.returncode == 1
    assert same_state_dir.stdout.strip() == (
        f"quarry up: already running on {cluster.state_dir} (pid {cluster.process.pid}); "
        f"stop it (Ctrl-C, or kill {cluster.process.pid}) or use another --state-dir"
    )
    other_state_dir = cluster.cli("--state-dir", str(tmp_path / "other"), "up", check=False)
    assert other_state_dir.returncode == 1
    [line] = other_state_dir.stdout.strip().splitlines()
    assert line.startswith("quarry up: already in use: enroll :")
    assert "Traceback" not in same_state_dir.stderr + other_state_dir.stderr
    assert cluster.service_pid("enroll") == enroll
    assert cluster.cli_json("secret", "list") is not None
    cluster.stop()
    assert not (cluster.state_dir / PID_FILE).exists()


def test_the_next_quarry_up_stops_what_a_killed_one_left_running(tmp_path: Path) -> None:
    """A leftover enroll service (as a kill -9 leaves one where the kernel cannot stop it)
    recorded in the pid file, its supervisor gone: the next `quarry up` stops it, says so,
    and starts its own."""
    cluster = new_cluster(tmp_path)
    cluster.state_dir.mkdir(parents=True)
    leftover = subprocess.Popen(
        [sys.executable, "-m", "quarry", "serve", "enroll"],
        env=cluster.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert eventually(lambda: process_start_time(leftover.pid) != 0)
        write_pid_file(
            cluster.state_dir / PID_FILE,
            [
                # The killed supervisor's pid, given since to another process (this test):
                # its start time differs, so it is not taken for a running `quarry up`.
                Recorded("quarry up", os.getpid(), 1),
                Recorded("enroll", leftover.pid, process_start_time(leftover.pid)),
            ],
        )
        cluster.start()
        try:
            assert leftover.wait(timeout=EXIT_TIMEOUT_S) is not None
            assert (
                f"quarry up: stopping what an earlier quarry up left running: "
                f"enroll (pid {leftover.pid})" in cluster.log_text()
            )
            assert cluster.service_pid("enroll") != leftover.pid
            assert cluster.cli_json("secret", "list") is not None
        finally:
            cluster.stop()
    finally:
        leftover.kill()
        leftover.wait()
