"""The gateway's worker processes (gateway/workers.py) on a real `quarry up` with two
workers: a gateway parent killed outright takes its workers with it (PR_SET_PDEATHSIG,
quarry/runtime/parent_death.py), so the gateway `quarry up` starts in its place can listen
on the port and serves."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.idle_connections import Gateway, enroll, gateway_of
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.test_quarry_up_processes import descendants, still_running

WORKERS = 2
# A worker drains on SIGTERM (gateway/serving.py) before it exits.
EXIT_TIMEOUT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path, extra_env={"QUARRY_GATEWAY_WORKERS": str(WORKERS)}) as up:
        yield up


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_the_gateway_parent_is_killed(cluster: QuarryCluster) -> None:
    gateway = gateway_of(cluster.state_dir, cluster.port_base)
    assert asyncio.run(enroll(gateway))
    parent = cluster.service_pid("gateway")
    workers = descendants(parent)
    assert len(workers) == WORKERS
    os.kill(parent, signal.SIGKILL)
    try:
        gone = eventually(lambda: not still_running(workers), timeout_s=EXIT_TIMEOUT_S)
    finally:
        for pid in still_running(workers):  # leave no orphan serving the port after a failure
            os.kill(pid, signal.SIGKILL)
    assert gone, "the workers outlived their killed parent"
    # `quarry up` restarts the gateway: with the old workers gone it binds and serves.
    assert eventually(lambda: _restarted(cluster, parent), timeout_s=EXIT_TIMEOUT_S)
    assert eventually(lambda: _enrolls(gateway), timeout_s=EXIT_TIMEOUT_S)


def _restarted(cluster: QuarryCluster, killed: int) -> bool:
    try:
        return cluster.service_pid("gateway") != killed
    except LookupError:
        return False


def _enrolls(gateway: Gateway) -> bool:
    try:
        return bool(asyncio.run(enroll(gateway)))
    except OSError:
        return False
