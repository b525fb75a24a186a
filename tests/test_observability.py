"""Observability end to end: a real Prometheus scrapes a real cluster driven by the emulator.

Debian's `prometheus` package provides both binaries used here: promtool checks and
unit-tests the alert rules in deploy/prometheus, and a private Prometheus (its own
temporary data folder, a free port, a one-second scrape interval) scrapes a cluster
started by `quarry up`. Emulated nodes then enroll, fetch config, send logs and answer
a live query, and the tests read Prometheus's HTTP API: every metric the observability
issue names exists and moves, every dashboard expression parses and returns data, and no
label carries a per-node value. Without the binaries the tests skip, except on CI
(CI=true), where that is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from quarry.cli import local_prometheus
from quarry.runtime.settings import PROCESSES, Settings
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "deploy/prometheus/rules"
DASHBOARDS_DIR = REPO / "deploy/grafana/dashboards"
PROMETHEUS_START_TIMEOUT_S = 30.0
NOW = 1_736_072_430
HOSTS = 3

# Counters and histograms that the emulated traffic must move (histograms by _count).
MOVING_METRICS = (
    # gateway
    "quarry_gateway_requests_total",
    "quarry_gateway_request_duration_seconds_count",
    "quarry_gateway_request_size_bytes_count",
    "quarry_gateway_response_size_bytes_count",
    "quarry_gateway_tls_connections_total",
    "quarry_gateway_active_nodes",
    "quarry_gateway_node_cache_lookups_total",
    "quarry_gateway_enrollments_total",
    "quarry_gateway_config_served_bytes_count",
    # gRPC, both sides
    "quarry_grpc_server_calls_total",
    "quarry_grpc_server_call_duration_seconds_count",
    "quarry_grpc_client_calls_total",
    "quarry_grpc_client_call_duration_seconds_count",
    # ZeroMQ
    "quarry_gateway_log_batches_sent_total",
    "quarry_gateway_log_acks_total",
    "quarry_gateway_log_ack_duration_seconds_count",
    # ingest
    "quarry_ingest_rows_inserted_total",
    "quarry_ingest_batches_total",
    "quarry_ingest_insert_duration_seconds_count",
    "quarry_ingest_duplicate_batches_total",
    "quarry_ingest_spool_appends_total",
    # enroll
    "quarry_enroll_enrollments_total",
    "quarry_enroll_valid_nodes",
    "quarry_enroll_checkins_recorded_total",
    # distributed
    "quarry_distributed_campaigns_started_total",
    "quarry_distributed_open_campaigns",
    "quarry_distributed_answers_total",
    "quarry_distributed_result_rows_total",
    # config
    "quarry_config_live_version",
    "quarry_config_live_size_bytes",
    "quarry_config_fetches_recorded_total",
    # detection: one live rule that hits the emulated logs (DETECTION_RULES)
    "quarry_detection_runs_total",
    "quarry_detection_run_seconds_count",
    "quarry_detection_hits_total",
    "quarry_detection_deliveries_total",
    "quarry_detection_open_alerts",
)
# Gauges of work in progress, and error counters: they must exist (at zero when idle).
PRESENT_METRICS = (
    "quarry_grpc_server_calls_in_flight",
    "quarry_grpc_client_calls_in_flight",
    "quarry_gateway_log_batches_in_flight",
    "quarry_gateway_open_connections",
    "quarry_ingest_unsettled_batches",
    "quarry_ingest_insert_errors_total",
    "quarry_ingest_spool_unreplayed_bytes",
    "quarry_ingest_spool_oldest_record_age_seconds",
    "quarry_ingest_replay_lag_batches",
    "quarry_distributed_pending_deliveries",
    "quarry_distributed_open_campaign_hosts",
    # never moved in this run, so present only because they start at zero
    "quarry_distributed_campaigns_closed_total",
    "quarry_gateway_requests_in_flight",
    # added by every process's metrics endpoint and loop watch
    "quarry_build_info",
    "quarry_event_loop_lag_seconds",
    "quarry_event_loop_last_turn_timestamp_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "quarry_ingest_spool_full_ratio",
    "quarry_ingest_spool_disk_free_bytes",
    "quarry_ingest_spool_limit_bytes",
    "quarry_detection_lag_seconds",
    "quarry_detection_schedule_seconds",
    "quarry_detection_outbox_pending",
    "quarry_detection_leader",
)
# What a dashboard's $job and $instance are on "All" (generate_dashboards.label_variable).
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
RUNBOOK_BASE = "{{ with $externalLabels.quarry_runbook_base }}"
# A live detection rule on the emulated logs, so the detection metrics and dashboard have
# series (a rule's series appear with its first run); short delays keep the test short.
DETECTION_RULE = "observed-rows"
DETECTION_RULES = {
    "detections": {
        DETECTION_RULE: {
            "schedule": 5,
            "sql": "SELECT host_identifier, batch_id FROM quarry.results"
            " WHERE {arrived} AND query = 'obs'",
        }
    }
}
DETECTION_ENV = {
    "QUARRY_DETECTION_SETTLE_S": "1",
    "QUARRY_DETECTION_REPOST_S": "1",  # how often the open-alerts gauge is refreshed
    "QUARRY_INGEST_FLUSH_INTERVAL_S": "0.2",
}


def binary_or_skip(name: str) -> str:
    """The path of a Prometheus binary; skip without it, except on CI where it must exist."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else "")
    if path:
        return path
    reason = f"no {name}: install Debian's prometheus package (apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        raise RuntimeError(reason)
    pytest.skip(reason)


# --- rules and configuration, with promtool -----------------------------------------------


def test_alert_rules_are_valid_and_pass_their_unit_tests() -> None:
    promtool = binary_or_skip("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", "quarry-alerts.yml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "quarry-alerts.test.yml"],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    rules = yaml.safe_load((RULES_DIR / "quarry-alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((RULES_DIR / "quarry-alerts.test.yml").read_text())["tests"]
    fired = {
        check["alertname"]
        for test in tests
        for check in test["alert_rule_test"]
        if check["exp_alerts"]
    }
    assert fired == set(alerts)
    runbooks = (REPO / "docs/observability.md").read_text()
    for name, rule in alerts.items():
        assert rule["annotations"]["runbook"].strip()
        # Absolute, from the settable external label (a placeholder host without it).
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE) and "{{ else }}https://" in url, name
        assert url.endswith("/observability.md#" + name.lower())
        assert f"### {name}" in runbooks, f"docs/observability.md has no runbook for {name}"


def test_the_deploy_scrape_config_is_valid_and_matches_quarry_up(tmp_path: Path) -> None:
    promtool = binary_or_skip("promtool")
    deploy_config = REPO / "deploy/prometheus/prometheus.yml"
    checked = subprocess.run(
        [promtool, "check", "config", str(deploy_config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    shipped = yaml.safe_load(deploy_config.read_text())["scrape_configs"]
    generated = local_prometheus.scrape_config(Settings())["scrape_configs"]
    assert shipped == generated
    written = local_prometheus.write_config(Settings(), tmp_path, 1.0)
    checked = subprocess.run(
        [promtool, "check", "config", str(written)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def dashboard_exprs() -> Iterator[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every target of every shipped dashboard."""
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.stem, panel["title"], target["expr"]


def test_every_dashboard_has_job_and_instance_variables_and_every_series_uses_them() -> None:
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        variables = {v["name"]: v for v in json.loads(path.read_text())["templating"]["list"]}
        assert {"datasource", "job", "instance"} <= set(variables), path.stem
        assert variables["instance"]["allValue"] == variables["job"]["allValue"] == ".*"
    series = re.compile(r"\b(quarry_\w+|process_\w+|up)(\{[^}]*\})?")
    unscoped = [
        (dashboard, title, match.group(0))
        for dashboard, title, expr in dashboard_exprs()
        for match in series.finditer(expr)
        if 'job=~"$job"' not in (match.group(2) or "")
        or 'instance=~"$instance"' not in (match.group(2) or "")
    ]
    assert unscoped == []


def test_p99_panels_show_zero_rather_than_a_gap() -> None:
    quantiles = [
        (dashboard, title, expr)
        for dashboard, title, expr in dashboard_exprs()
        if "histogram_quantile" in expr
    ]
    assert len(quantiles) >= 6
    assert [q for q in quantiles if ">= 0) or (" not in q[2] or "_count" not in q[2]] == []


# --- a private Prometheus scraping a running cluster ---------------------------------------


@dataclass
class PrometheusServer:
    url: str

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            return json.loads(reply.read())

    def query(self, expr: str) -> dict:
        """The instant query's full answer ({"status": ..., "data": {"result": [...]}})."""
        try:
            return self.api("query", query=expr)
        except urllib.error.HTTPError as exc:  # a bad expression: 400 with a JSON body
            return json.loads(exc.read())

    def vector(self, expr: str) -> list[dict]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        """The first sample's value (at a given time, default now); 0 when there is none."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        answer = self.api("query", **params)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def targets_up(self) -> set[str]:
        active = self.api("targets")["data"]["activeTargets"]
        return {t["labels"]["job"] for t in active if t["health"] == "up"}

    def last_scrape_after(self, moment: float) -> bool:
        active = self.api("targets")["data"]["activeTargets"]
        return all(_scrape_time(t["lastScrape"]) > moment for t in active)


def _scrape_time(text: str) -> float:
    # "2026-11-27T08:01:59.123456789Z": seconds precision is enough here.
    return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prometheus(binary: str, config: Path, data_dir: Path, log: Path) -> subprocess.Popen:
    port = free_port()
    command = local_prometheus.command(binary, config, data_dir, "127.0.0.1", port)
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    process.port = port  # type: ignore[attr-defined]
    return process


def wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"prometheus not ready on :{port}:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class ScrapedCluster:
    cluster: QuarryCluster
    prometheus: PrometheusServer
    node_ids: list[str]
    host_identifiers: list[str]
    before_traffic: float  # a time when Prometheus had scraped everything, before any node


def new_node(cluster: QuarryCluster, number: int, **options: object) -> OsqueryNode:
    profile = HostProfile.make(number, seed=cluster.port_base)
    defaults: dict[str, object] = {
        "server": cluster.gateway,
        "ca_file": cluster.ca_cert,
        "enroll_secret": cluster.enroll_secret,
        "profile": profile,
        "host_identifier": profile.hardware_uuid.lower(),
        "retry_time_scale": 0,
    }
    return OsqueryNode(**{**defaults, **options})  # type: ignore[arg-type]


async def drive_fleet(cluster: QuarryCluster) -> list[str]:
    """Enroll, config, logs (one re-sent), a live query; a few refusals. Host identifiers."""
    nodes = [new_node(cluster, number) for number in range(1, HOSTS + 1)]
    try:
        for node in nodes:
            assert await node.fetch_config() is not None
            host = node.host_identifier
            records = log_records.event_records("obs", host, NOW, added=[{"pid": "1"}])
            assert await node.send_logs("result", records)
            assert await node.send_logs("result", records)  # a resend: a duplicate at ingest
            status = log_records.status_record(host, NOW, "observed")
            assert await node.send_logs("status", [status])
        query = asyncio.create_task(
            asyncio.to_thread(cluster.cli, "query", "run", "SELECT 1 AS one", "--timeout", "60")
        )
        answered: set[str] = set()
        deadline = time.monotonic() + 60
        while len(answered) < len(nodes) and time.monotonic() < deadline:
            for node in nodes:
                if node.host_identifier not in answered:
                    round_ = await node.run_distributed_once()
                    if round_.results and round_.written:
                        answered.add(node.host_identifier)
            await asyncio.sleep(0.2)
        await query
        assert len(answered) == len(nodes)
        wrong_secret = {"enroll_secret": "not the secret", "enroll_max_attempts": 1}
        async with new_node(cluster, 99, **wrong_secret) as refused:
            assert await refused.fetch_config() is None  # enrollment refused, node_invalid
    finally:
        for node in nodes:
            await node.aclose()
    return [node.host_identifier for node in nodes]


def fail_a_tls_handshake(cluster: QuarryCluster) -> None:
    """Plain HTTP on the TLS port: accepted, never established."""
    host, port = cluster.gateway.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(100)  # the gateway closes the connection


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedCluster]:
    binary = binary_or_skip("prometheus")
    root = tmp_path_factory.mktemp("observability")
    with (
        quarry_cluster(root, "", DETECTION_ENV) as cluster,
        tempfile.TemporaryDirectory() as data_dir,
    ):
        settings = Settings.from_env(cluster.env())
        config = local_prometheus.write_config(settings, root / "prometheus", 1.0)
        log = root / "prometheus.log"
        process = start_prometheus(binary, config, Path(data_dir), log)
        try:
            wait_ready(process, process.port, log)  # type: ignore[attr-defined]
            prometheus = PrometheusServer(f"http://127.0.0.1:{process.port}")  # type: ignore[attr-defined]
            jobs = {f"quarry-{service}" for service in PROCESSES}
            assert eventually(lambda: prometheus.targets_up() == jobs), prometheus.targets_up()
            before_traffic = time.time()
            assert eventually(lambda: prometheus.last_scrape_after(before_traffic + 1))
            # A config change after the first scrapes, so the config gauges move.
            config_file = root / "config.json"
            config_file.write_text(json.dumps({"options": {"logger_tls_period": 7}}))
            cluster.cli("config", "set", "-f", str(config_file))
            start_detection_rule(cluster, root / "rules.yaml")
            fail_a_tls_handshake(cluster)
            hosts = asyncio.run(drive_fleet(cluster))
            # Its hits (one row per host) raise alerts, delivered to ClickHouse.
            assert eventually(lambda: detection_rule(cluster)["total_hits"] >= HOSTS, 60.0)
            delivered = 'sum(quarry_detection_deliveries_total{outcome="delivered"})'
            assert eventually(lambda: prometheus.value(delivered) >= 1, 60.0)
            opened = "max(quarry_detection_open_alerts)"
            assert eventually(lambda: prometheus.value(opened) >= HOSTS, 60.0)
            cluster.cli("detection", "list")  # the detection service's gRPC server
            cluster.sql("SELECT count() FROM quarry.results")  # LogStore.Query over gRPC
            node_ids = [n["node_id"] for n in cluster.cli_json("nodes", "list")]
            # Past the gateway's active-nodes sweep and the batched writes, then one scrape.
            time.sleep(local_prometheus_sweep_s())
            settled = time.time() + 1
            assert eventually(lambda: prometheus.last_scrape_after(settled))
            yield ScrapedCluster(cluster, prometheus, node_ids, hosts, before_traffic)
        finally:
            stop(process)


def detection_rule(cluster: QuarryCluster) -> dict:
    answer = cluster.cli_json("detection", "list")
    return next(r for r in answer["detections"] if r["name"] == DETECTION_RULE)  # type: ignore[index]


def start_detection_rule(cluster: QuarryCluster, path: Path) -> None:
    """DETECTION_RULES live, and run once: it evaluates the rows stored from then on."""
    path.write_text(yaml.safe_dump(DETECTION_RULES))
    cluster.cli("config", "apply", "-f", str(path))

    def has_run() -> bool:
        try:
            return detection_rule(cluster)["last_run_at"] > 0
        except StopIteration:
            return False

    assert eventually(has_run, 60.0)


def local_prometheus_sweep_s() -> float:
    from gateway.node_cache import ACTIVE_SWEEP_INTERVAL_S

    return ACTIVE_SWEEP_INTERVAL_S + 1


def test_every_named_metric_exists_and_moves(scraped: ScrapedCluster) -> None:
    prometheus = scraped.prometheus
    # A labelled series first appears when incremented: absent before counts as 0.
    still = [
        name
        for name in MOVING_METRICS
        if prometheus.value(f"sum({name})")
        == prometheus.value(f"sum({name})", scraped.before_traffic)
    ]
    assert still == [], f"metrics that did not move: {still}"
    missing = [name for name in PRESENT_METRICS if not prometheus.vector(name)]
    assert missing == [], f"metrics not exported: {missing}"


def test_the_metrics_say_what_the_emulated_fleet_did(scraped: ScrapedCluster) -> None:
    prometheus = scraped.prometheus
    assert prometheus.value("sum(quarry_gateway_active_nodes)") == HOSTS
    assert (
        prometheus.value('sum(quarry_ingest_duplicate_batches_total{job="quarry-ingest"})') >= HOSTS
    )
    failed_handshakes = prometheus.value(
        'sum(quarry_gateway_tls_connections_total{stage="accepted"})'
        ' - sum(quarry_gateway_tls_connections_total{stage="established"})'
    )
    assert failed_handshakes >= 1
    assert prometheus.value('sum(quarry_gateway_enrollments_total{outcome="refused"})') >= 1
    assert prometheus.value('sum(quarry_enroll_enrollments_total{outcome="invalid_secret"})') >= 1
    # The gateway sends enrollments in groups (EnrollMany): calls on both sides, and the
    # enroll service counts every enrollment in them.
    assert (
        prometheus.value(
            "sum(quarry_grpc_server_calls_total"
            '{method="/quarry.v1.EnrollService/EnrollMany", code="OK"})'
        )
        >= 1
    )
    assert (
        prometheus.value(
            'sum(quarry_grpc_client_calls_total{job="quarry-gateway",'
            ' method="/quarry.v1.EnrollService/EnrollMany"})'
        )
        >= 1
    )
    assert prometheus.value('sum(quarry_enroll_enrollments_total{outcome="enrolled"})') >= HOSTS
    # The gateway's watch streams are open calls on both sides.
    assert (
        prometheus.value(
            'sum(quarry_grpc_server_calls_in_flight{method="/quarry.v1.EnrollService/WatchNodes"})'
        )
        >= 1
    )
    assert prometheus.value('sum(quarry_ingest_rows_inserted_total{table="results"})') >= HOSTS
    # Acks and their latency name the ingest replica that sent them.
    replica = scraped.cluster.settings.zmq_endpoints()[0].removeprefix("tcp://")
    ok_acks = f'quarry_gateway_log_acks_total{{result="ok", replica="{replica}"}}'
    assert prometheus.value(f"sum({ok_acks})") >= HOSTS
    timed = f'quarry_gateway_log_ack_duration_seconds_count{{replica="{replica}"}}'
    assert prometheus.value(f"sum({timed})") >= HOSTS
    assert prometheus.value('count(quarry_build_info{version!=""})') == len(PROCESSES)
    assert prometheus.value("count(quarry_event_loop_lag_seconds)") == len(PROCESSES)


def test_every_dashboard_expression_parses_and_returns_data(scraped: ScrapedCluster) -> None:
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert {path.stem for path in dashboards} >= {"quarry-overview", "quarry-gateway"}
    empty, failed = [], []
    for dashboard, title, expr in dashboard_exprs():
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        answer = scraped.prometheus.query(expr)
        if answer["status"] != "success":
            failed.append((dashboard, title, answer.get("error")))
        elif not answer["data"]["result"]:  # every series starts at zero: never empty
            empty.append((dashboard, title, expr))
    assert failed == []
    assert empty == []


def test_no_label_carries_a_per_node_value(scraped: ScrapedCluster) -> None:
    series = scraped.prometheus.api("series", **{"match[]": '{__name__=~"quarry_.*"}'})["data"]
    assert len(series) > 100
    per_node = set(scraped.node_ids) | set(scraped.host_identifiers)
    assert len(per_node) == 2 * HOSTS
    leaks = [
        labels
        for labels in series
        for value in labels.values()
        if any(identifier in value for identifier in per_node)
    ]
    assert leaks == []
    uuid_like = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-|[0-9a-f]{32}")
    assert [labels for labels in series if any(uuid_like.search(v) for v in labels.values())] == []


# --- quarry up --with-prometheus -------------------------------------------------------------


def test_quarry_up_with_prometheus_scrapes_every_process(tmp_path: Path) -> None:
    cluster = QuarryCluster(
        state_dir=tmp_path / "state",
        port_base=free_port_base(),
        clickhouse_url="",
        output=tmp_path / "quarry-up.log",
    )
    port = local_prometheus.default_port(Settings.from_env(cluster.env()))
    with cluster.output.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "quarry", "up", "--with-prometheus", "--scrape-interval", "1"],
            env=cluster.env(),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        started = eventually(
            lambda: process.poll() is not None or "Quarry is running." in cluster.log_text(), 120
        )
        assert started and process.poll() is None, cluster.log_text()
        if local_prometheus.find_binary() is None:
            assert "apt-get install prometheus" in cluster.log_text()
            return
        assert f"prometheus        http://127.0.0.1:{port}" in cluster.log_text()
        prometheus = PrometheusServer(f"http://127.0.0.1:{port}")
        jobs = {f"quarry-{service}" for service in PROCESSES}
        assert eventually(lambda: prometheus.targets_up() == jobs, 60), cluster.log_text()
        rules = prometheus.api("rules")["data"]["groups"]
        assert {rule["name"] for group in rules for rule in group["rules"]} >= {
            "QuarryServiceDown",
            "QuarryNoCheckins",
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert not _listening(port)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
