"""The benchmark's cost model and ceilings at tiny scale: /proc sampling, the saturation driver
against the bare HTTPS server, raw inserts into chdb and the ClickHouse server, and finding
the processes of a real `quarry up`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from clickhouse_driver import Client

from bench.__main__ import enrolled_node_key
from bench.authentication_cost import (
    gateway_counters,
    gateway_metrics_url,
    node_identity,
    start_unauthenticated_gateway,
    wait_until_healthy,
)
from bench.ceilings import (
    SCRATCH_DATABASE,
    ceiling_rows,
    free_tcp_port,
    http_ceiling,
    start_bare_server,
    stop_process,
    storage_ceiling,
    wait_for_port,
)
from bench.process_costs import (
    ProcessSampler,
    cpu_s_per_host_second,
    find_clickhouse_pid,
    find_quarry_service_pids,
    hosts_per_core,
    read_cmdline,
    rss_per_10k_hosts,
)
from bench.saturation import SaturationResult, SaturationTarget, run_saturation
from ingest_service.clickhouse_server_store import client_url
from ingest_service.log_rows import RESULT_COLUMNS
from quarry.encryption.gateway_certificates import TlsFiles, ensure_certificates
from quarry.runtime.settings import PROCESSES
from tests.emulator.http_client import ServerAddress, osquery_ssl_context
from tests.free_ports import free_port_base
from tests.quarry_cluster import QuarryCluster, quarry_cluster

# Waits for a line on stdin, burns some CPU, says so, then idles until killed.
BURNER = """
import sys, time
sys.stdin.readline()
deadline = time.process_time() + 0.3
while time.process_time() < deadline:
    pass
print("burnt", flush=True)
time.sleep(120)
"""
# Starts a burner as its own child (sharing stdin and stdout) and waits: it burns nothing.
PARENT_OF_BURNER = f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", {BURNER!r}])
"""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_certificates(tmp_path_factory.mktemp("tls"), ["localhost"])


@pytest.fixture(scope="module")
def bare_server(tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The bare HTTPS server on a free port, one worker; yields the port."""
    config_file = tmp_path_factory.mktemp("bare") / "config.json"
    config_file.write_bytes(b'{"schedule":{}}')
    port = free_tcp_port()
    server = start_bare_server(port, tls_files, 1, config_file)
    try:
        wait_for_port("127.0.0.1", port, server)
        yield port
    finally:
        stop_process(server)


def start_python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_sampler_counts_cpu_and_memory_of_a_process_and_of_its_descendants() -> None:
    burner = start_python(BURNER)
    parent = start_python(PARENT_OF_BURNER)  # the grandchild's output comes through it
    try:
        sampler = ProcessSampler({"burner": burner.pid, "parent": parent.pid}, interval_s=0.1)
        sampler.start()
        for process in (burner, parent):
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        assert burner.stdout is not None and parent.stdout is not None
        assert burner.stdout.readline().strip() == "burnt"
        assert parent.stdout.readline().strip() == "burnt"
        costs = sampler.stop()
    finally:
        for process in (burner, parent):
            process.kill()
            process.wait()
    for name in ("burner", "parent"):
        assert costs[name].cpu_s > 0, name
        assert costs[name].rss_max_bytes > 0 and costs[name].rss_end_bytes > 0, name
    # The parent's tree holds two Python processes, the burner one.
    assert costs["parent"].rss_end_bytes > costs["burner"].rss_end_bytes


def test_a_process_that_is_gone_costs_nothing_and_does_not_break_the_sampler() -> None:
    gone = start_python("pass")
    gone.wait()
    sampler = ProcessSampler({"gone": gone.pid})
    sampler.start()
    costs = sampler.stop()
    assert costs["gone"].cpu_s == 0 and costs["gone"].rss_max_bytes == 0


def test_cost_model_figures() -> None:
    per_host_second = cpu_s_per_host_second(server_cpu_s=30.0, hosts=1000, duration_s=60.0)
    assert per_host_second == pytest.approx(0.0005)
    assert hosts_per_core(per_host_second) == pytest.approx(2000)
    assert rss_per_10k_hosts(500 * 2**20, hosts=5000) == 1000 * 2**20
    with pytest.raises(ValueError):
        cpu_s_per_host_second(1.0, hosts=0, duration_s=1.0)


def test_http_ceiling_answers_both_endpoints_without_errors(tls_files: TlsFiles) -> None:
    figures = http_ceiling(tls_files, workers=1, connections=2, duration_s=0.5)
    for endpoint in ("distributed_read", "config"):
        assert figures[endpoint]["requests"] > 0, figures
        assert figures[endpoint]["errors"] == 0, figures
        assert figures[endpoint]["requests_per_s"] > 0
        assert figures[endpoint]["p50_ms"] <= figures[endpoint]["p99_ms"]
        assert figures[endpoint]["server_cpu_s"] > 0


def test_saturation_sends_a_fresh_body_each_time(tls_files: TlsFiles, bare_server: int) -> None:
    sent: list[int] = []

    def log_body(number: int) -> bytes:
        sent.append(number)
        return b'{"node_key":"k","log_type":"result","data":[{"n":%d}]}' % number

    target = SaturationTarget(
        ServerAddress("localhost", bare_server),
        osquery_ssl_context(tls_files.ca_cert),
        "/api/v1/osquery/log",
        log_body,
        node_key="k",
    )
    result = run_saturation(target, connections=3, duration_s=1.0)
    assert result.requests > 0 and result.errors == 0, result.as_dict()
    assert len(set(sent)) == len(sent) > result.requests  # the warm-up requests count too


def test_saturation_counts_answers_osquery_would_reject(
    tls_files: TlsFiles, bare_server: int
) -> None:
    target = SaturationTarget(
        ServerAddress("localhost", bare_server),
        osquery_ssl_context(tls_files.ca_cert),
        "/no/such/path",  # Starlette's plain-text 404 is not JSON: osquery fails it
        b'{"node_key":"k"}',
    )
    result = run_saturation(target, connections=2, duration_s=0.5)
    assert result.requests > 0
    assert result.errors == result.requests
    assert "HTTP 404" in result.error_examples[0]


def test_ceiling_rows_are_results_rows_from_several_hosts() -> None:
    rows = [dict(zip(RESULT_COLUMNS, row, strict=True)) for row in ceiling_rows(45, 20)]
    assert len(rows) == 45
    assert {row["host_identifier"] for row in rows} == {"web-00000", "web-00001", "web-00002"}
    assert all(row["action"] == "added" and "pid" in row["column_names"] for row in rows)


def test_storage_ceiling_on_chdb_uses_a_directory_of_its_own() -> None:
    scratch_root = Path(tempfile.gettempdir())
    before = set(scratch_root.glob("quarry-bench-chdb-*"))
    figures = storage_ceiling("", 2_000, batch_rows=500, max_seconds=30)
    assert figures["backend"] == "chdb"
    assert (figures["rows"], figures["inserts"], figures["insert_batch_rows"]) == (2_000, 4, 500)
    assert figures["rows_per_s"] > 0
    assert set(scratch_root.glob("quarry-bench-chdb-*")) == before


def test_storage_ceiling_on_the_server_leaves_no_scratch_table(clickhouse_url: str) -> None:
    figures = storage_ceiling(clickhouse_url, 2_000, batch_rows=500, max_seconds=30)
    assert figures["backend"] == "clickhouse-server"
    assert (figures["rows"], figures["inserts"]) == (2_000, 4)
    assert figures["rows_per_s"] > 0
    client = Client.from_url(client_url(clickhouse_url, "default"))
    try:
        leftover = client.execute(
            "SELECT count() FROM system.databases WHERE name = %(name)s",
            {"name": SCRATCH_DATABASE},
        )
    finally:
        client.disconnect()
    assert leftover == [(0,)]


def test_find_clickhouse_pid_by_port(clickhouse_url: str) -> None:
    pid = find_clickhouse_pid(port=urlsplit(clickhouse_url).port)
    assert "clickhouse" in " ".join(read_cmdline(pid))
    with pytest.raises(LookupError):
        find_clickhouse_pid(port=free_tcp_port())


def test_find_quarry_service_pids_finds_every_process(tmp_path: Path) -> None:
    with quarry_cluster(tmp_path) as cluster:
        assert cluster.process is not None
        pids = find_quarry_service_pids(cluster.process.pid)
        assert set(pids) == set(PROCESSES)  # the five services and the REST API
        for name, pid in pids.items():
            assert pid == cluster.service_pid(name)
        with ProcessSampler(pids) as sampler:
            pass
    assert all(cost.rss_end_bytes > 0 for cost in sampler.costs.values()), sampler.costs


def distributed_reads(cluster: QuarryCluster, port: int, node_key: str) -> SaturationResult:
    target = SaturationTarget(
        ServerAddress("localhost", port),
        osquery_ssl_context(cluster.ca_cert),
        "/api/v1/osquery/distributed/read",
        orjson.dumps({"node_key": node_key}),
        node_key=node_key,
    )
    return run_saturation(target, connections=1, duration_s=0.3)


def test_the_unauthenticated_gateway_skips_only_the_key_check(tmp_path: Path) -> None:
    with quarry_cluster(tmp_path) as cluster:
        node_key = enrolled_node_key(cluster)
        node = node_identity(cluster, node_key)
        assert node["node_id"] and node["host_identifier"] == f"saturation-{cluster.port_base}"
        port = free_port_base()
        gateway = start_unauthenticated_gateway(cluster, node, port, 1, tmp_path)
        try:
            wait_until_healthy(port, cluster.ca_cert, gateway, tmp_path)
            real_port = cluster.port_base
            before = gateway_counters(gateway_metrics_url(cluster), "distributed_read")
            refused = distributed_reads(cluster, real_port, "not-a-node-key")
            after = gateway_counters(gateway_metrics_url(cluster), "distributed_read")
            accepted = distributed_reads(cluster, port, "not-a-node-key")
            valid = distributed_reads(cluster, real_port, node_key)
        finally:
            stop_process(gateway)
    # The real gateway refuses a bogus key, from memory after its first lookup...
    assert refused.requests > 0 and refused.errors == refused.requests
    assert "HTTP 401" in refused.error_examples[0]
    assert after["requests"] > before["requests"]
    assert after.get("negative_hit", 0) > before.get("negative_hit", 0)
    # ...while the gateway with authentication skipped serves it, like a valid key.
    assert accepted.requests > 0 and accepted.errors == 0, accepted.error_examples
    assert valid.requests > 0 and valid.errors == 0, valid.error_examples
