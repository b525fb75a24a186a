"""Liveness that proves the loop turns, and what every process's metrics port exports.

/livez (quarry/runtime/metrics_endpoint.py, quarry/runtime/loop_watch.py) is tested on a
process whose event loop is blocked on purpose (tests/blocking_loop_process.py), then on a
whole `quarry up` cluster with QUARRY_GATEWAY_WORKERS=2, the Kubernetes value: every process
answers it, and the gateway's parent fails it while one worker's loop cannot turn (that
worker stopped; the parent's metrics thread is not). The same cluster's /metrics carry
process_* and python_* for the gateway with workers, quarry_build_info, and series that
start at zero before their first event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from quarry.runtime.metrics_endpoint import child_pids, package_version
from quarry.runtime.settings import SERVICES, Settings
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.service_processes import REPO_ROOT

BLOCK_S = 4.0  # how long the test process's loop is blocked; longer than its window
WINDOW_S = "1"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(metrics: str, series: str) -> float | None:
    """The value of the first exposition line of `series`: a bare name matches any labels,
    name{labels} only those labels, in the order prometheus-client writes them."""
    for line in metrics.splitlines():
        name_labels, _, value = line.rpartition(" ")
        if name_labels == series or ("{" not in series and name_labels.split("{")[0] == series):
            return float(value)
    return None


def test_livez_fails_while_the_event_loop_is_blocked_and_recovers(tmp_path: Path) -> None:
    settings = Settings.from_env({"QUARRY_PORT_BASE": str(free_port_base())})
    base = f"http://127.0.0.1:{settings.metrics_port('enroll')}"
    flag = tmp_path / "block"
    env = {
        **os.environ,
        "QUARRY_PORT_BASE": str(settings.metrics_port_base - 10),
        "QUARRY_LIVENESS_WINDOW_S": WINDOW_S,
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.blocking_loop_process", str(flag), str(BLOCK_S)],
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        assert eventually(lambda: _status(f"{base}/livez") == 200)
        flag.touch()
        stuck = eventually(lambda: get(f"{base}/livez")[0] == 503)
        assert stuck, "a blocked loop must fail /livez"
        status, text = get(f"{base}/livez")
        assert status == 503 and "event loop stuck" in text
        # The metrics thread answers meanwhile: /healthz says the process is up, not alive.
        assert get(f"{base}/healthz")[0] == 200
        assert eventually(lambda: _status(f"{base}/livez") == 200)  # unblocked: alive again
        lag = sample(get(f"{base}/metrics")[1], "quarry_event_loop_lag_seconds")
        assert lag is not None and lag >= 1.0, lag  # the blocked seconds show as lag
    finally:
        process.terminate()
        process.wait(10)


def _status(url: str) -> int:
    try:
        return get(url)[0]
    except OSError:  # not listening yet
        return 0


@pytest.fixture(scope="module")
def workers_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    env = {
        "QUARRY_GATEWAY_WORKERS": "2",
        "QUARRY_LIVENESS_WINDOW_S": "2",
        # Long enough that a log POST waits for a stopped ingest rather than time out.
        "QUARRY_LOG_ACK_TIMEOUT_S": "60",
    }
    with quarry_cluster(tmp_path_factory.mktemp("liveness"), "", env) as cluster:
        yield cluster


def metrics_url(cluster: QuarryCluster, service: str, path: str = "/metrics") -> str:
    return f"http://127.0.0.1:{cluster.settings.metrics_port(service)}{path}"


def test_every_process_answers_livez(workers_cluster: QuarryCluster) -> None:
    for service in SERVICES:
        url = metrics_url(workers_cluster, service, "/livez")
        assert eventually(lambda url=url: _status(url) == 200), (service, get(url))


def test_a_gateway_with_workers_exports_process_and_python_metrics(
    workers_cluster: QuarryCluster,
) -> None:
    text = get(metrics_url(workers_cluster, "gateway"))[1]
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert sample(text, name) is not None, f"{name} missing from the gateway's /metrics"
    parent = workers_cluster.service_pid("gateway")
    workers = child_pids(parent)
    assert len(workers) == 2
    # The figures are the parent's and its workers' together: more than the parent's own.
    parent_rss = int(Path(f"/proc/{parent}/statm").read_text().split()[1]) * os.sysconf(
        "SC_PAGE_SIZE"
    )
    assert sample(text, "process_resident_memory_bytes") > parent_rss
    assert sample(text, f'quarry_build_info{{version="{package_version()}"}}') == 1


def test_series_start_at_zero_before_their_first_event(workers_cluster: QuarryCluster) -> None:
    def text(service: str) -> str:
        return get(metrics_url(workers_cluster, service))[1]

    ingest, distributed, gateway = text("ingest"), text("distributed"), text("gateway")
    # No campaign was closed and nobody queried the logs: the series exist, at zero.
    assert sample(distributed, 'quarry_distributed_campaigns_closed_total{reason="expired"}') == 0
    query = '{code="OK",method="/quarry.v1.LogStore/Query"}'
    assert sample(ingest, f"quarry_grpc_server_calls_total{query}") == 0
    assert sample(ingest, "quarry_ingest_spool_full_ratio") == 0
    assert sample(ingest, "quarry_ingest_spool_disk_free_bytes") > 0
    assert sample(ingest, "quarry_build_info") == 1
    # Each ingest replica the gateway knows has its ack series from the start.
    replica = workers_cluster.settings.zmq_endpoints()[0].removeprefix("tcp://")
    acks = f'quarry_gateway_log_acks_total{{replica="{replica}",result="timeout"}}'
    assert sample(gateway, acks) == 0
    assert sample(gateway, 'quarry_gateway_requests_in_flight{endpoint="log"}') == 0
    # The gateway's stubs' methods it never calls: its client series exist, at zero.
    revoke = '{code="OK",method="/quarry.v1.EnrollService/RevokeNode"}'
    assert sample(gateway, f"quarry_grpc_client_calls_total{revoke}") == 0
    revoke_time = '{method="/quarry.v1.EnrollService/RevokeNode"}'
    assert sample(gateway, f"quarry_grpc_client_call_duration_seconds_count{revoke_time}") == 0
    download = '{method="/quarry.v1.DistributedService/DownloadCarve"}'
    assert sample(gateway, f"quarry_grpc_client_calls_in_flight{download}") == 0
    assert sample(gateway, f"quarry_grpc_client_call_duration_seconds_count{download}") is None
    assert sample(gateway, "quarry_gateway_open_connections") is not None


def test_the_gateway_fails_livez_while_a_worker_s_loop_cannot_turn(
    workers_cluster: QuarryCluster,
) -> None:
    livez = metrics_url(workers_cluster, "gateway", "/livez")
    assert eventually(lambda: _status(livez) == 200)
    worker = child_pids(workers_cluster.service_pid("gateway"))[0]
    os.kill(worker, signal.SIGSTOP)  # the worker's loop stops; the parent's thread serves on
    try:
        assert eventually(lambda: _status(livez) == 503), get(livez)
        assert "event loop stuck" in get(livez)[1]
    finally:
        os.kill(worker, signal.SIGCONT)
    assert eventually(lambda: _status(livez) == 200), get(livez)


def test_a_log_post_waiting_for_ingest_is_a_request_in_flight(
    workers_cluster: QuarryCluster,
) -> None:
    gateway = metrics_url(workers_cluster, "gateway")
    node = OsqueryNode(
        server=workers_cluster.gateway,
        ca_file=workers_cluster.ca_cert,
        enroll_secret=workers_cluster.enroll_secret,
        profile=HostProfile.make(1, seed=workers_cluster.port_base),
        retry_time_scale=0,
    )

    def in_flight() -> float:
        return sample(get(gateway)[1], 'quarry_gateway_requests_in_flight{endpoint="log"}') or 0

    async def post() -> bool:
        async with node:
            assert await node.enroll()
            status = log_records.status_record(node.host_identifier, 1_736_072_430, "waiting")
            return await node.send_logs("status", [status])

    ingest = workers_cluster.service_pid("ingest")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        os.kill(ingest, signal.SIGSTOP)  # the batch is sent, its ack cannot come
        try:
            sent = pool.submit(asyncio.run, post())
            assert eventually(lambda: in_flight() >= 1), get(gateway)[1]
        finally:
            os.kill(ingest, signal.SIGCONT)
        assert sent.result(120)  # acknowledged once ingest runs again: stored
    assert eventually(lambda: in_flight() == 0)
