"""What authentication costs on the hot path, measured in the same run (issue 5).

Every osquery request is authenticated; the gateway answers from the node keys it holds in
memory, kept current by the enroll service's watch stream. This phase saturates the
distributed read and the config fetch twice each, with the same driver, connections and
duration:

- on the cluster's own gateway, with the node key of an enrolled node;
- on a second gateway process (bench/unauthenticated_gateway.py): the same app, settings,
  certificate, worker count and services, with authentication skipped.

Their requests/s, latencies and server CPU per request are reported side by side. The real
gateway's /metrics, read before and after each of its runs, show that every request was a
node-cache hit: no call to the enroll service per request.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.ceilings import (
    CEILING_ENDPOINTS,
    REPO_ROOT,
    repository_env,
    saturate_with_server_cpu,
    stop_process,
)
from bench.saturation import SaturationTarget
from bench.unauthenticated_gateway import FIXED_NODE_ENV
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from tests.emulator.http_client import ServerAddress, osquery_ssl_context
from tests.free_ports import free_port_base
from tests.quarry_cluster import QuarryCluster

START_TIMEOUT_S = 60.0
NODE_CACHE_FAMILY = "quarry_gateway_node_cache_lookups"
REQUESTS_FAMILY = "quarry_gateway_requests"
SERVICE_LOOKUPS = ("miss_found", "miss_unknown")  # each one a GetNode call


def measure_authentication_cost(
    cluster: QuarryCluster,
    node_key: str,
    *,
    workers: int,
    connections: int,
    duration_s: float,
    scratch: Path,
) -> dict[str, Any]:
    """Per endpoint: {"authenticated", "skipped", "ratio", "node_cache"}; see the docstring."""
    node = node_identity(cluster, node_key)
    port_base = free_port_base()
    gateway = start_unauthenticated_gateway(cluster, node, port_base, workers, scratch)
    try:
        wait_until_healthy(port_base, cluster.ca_cert, gateway, scratch)
        figures: dict[str, Any] = {"workers": workers, "connections": connections}
        for name, path in CEILING_ENDPOINTS.items():
            figures[name] = compare_one_endpoint(
                cluster, gateway.pid, port_base, name, path, node_key, connections, duration_s
            )
    finally:
        stop_process(gateway)
    return figures


def compare_one_endpoint(
    cluster: QuarryCluster,
    unauthenticated_pid: int,
    unauthenticated_port: int,
    name: str,
    path: str,
    node_key: str,
    connections: int,
    duration_s: float,
) -> dict[str, Any]:
    context = osquery_ssl_context(cluster.ca_cert)
    body = orjson.dumps({"node_key": node_key})
    real_port = int(cluster.gateway.rsplit(":", 1)[1])
    metrics_url = gateway_metrics_url(cluster)

    def saturate(port: int, pid: int) -> dict[str, Any]:
        target = SaturationTarget(
            ServerAddress("localhost", port), context, path, body, node_key=node_key
        )
        return saturate_with_server_cpu(target, pid, connections, duration_s)

    before = gateway_counters(metrics_url, name)
    authenticated = saturate(real_port, cluster.service_pid("gateway"))
    after = gateway_counters(metrics_url, name)
    skipped = saturate(unauthenticated_port, unauthenticated_pid)
    return {
        "authenticated": authenticated,
        "skipped": skipped,
        "ratio": share(authenticated["requests_per_s"], skipped["requests_per_s"]),
        "node_cache": node_cache_report(before, after),
    }


def share(ours: float, reference: float) -> float | None:
    return round(ours / reference, 3) if reference else None


# --- the unauthenticated gateway ------------------------------------------------------------


def node_identity(cluster: QuarryCluster, node_key: str) -> dict[str, Any]:
    """The enrolled node's identity, asked once: the unauthenticated gateway serves it."""
    with cluster.channel("enroll") as channel:
        node = enroll_pb2_grpc.EnrollServiceStub(channel).GetNode(
            enroll_pb2.GetNodeRequest(node_key=node_key), timeout=30
        )
    if not node.found or node.revoked:
        raise RuntimeError("the saturation node is not enrolled")
    return {
        "node_id": node.node_id,
        "host_identifier": node.host_identifier,
        "platform": node.platform,
        "tags": list(node.tags),
        "group": node.group,
    }


def start_unauthenticated_gateway(
    cluster: QuarryCluster, node: dict[str, Any], port_base: int, workers: int, scratch: Path
) -> subprocess.Popen[bytes]:
    """The cluster's gateway settings, on other ports, pointed at the cluster's services."""
    state_dir = scratch / "unauthenticated-gateway"
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = cluster.settings
    tls = cluster.state_dir / "tls"
    env = {
        **cluster.env(),
        "PYTHONPATH": repository_env()["PYTHONPATH"],
        "QUARRY_STATE_DIR": str(state_dir),
        "QUARRY_PORT_BASE": str(port_base),
        "QUARRY_GATEWAY_WORKERS": str(workers),
        "QUARRY_ENROLL_ADDR": settings.service_addr("enroll"),
        "QUARRY_CONFIG_ADDR": settings.service_addr("config"),
        "QUARRY_DISTRIBUTED_ADDR": settings.service_addr("distributed"),
        "QUARRY_INGEST_ZMQ_ADDRS": ",".join(settings.zmq_endpoints()),
        "QUARRY_TLS_CERT": str(tls / "server.pem"),
        "QUARRY_TLS_KEY": str(tls / "server.key"),
        "QUARRY_TLS_CA": str(tls / "ca.pem"),
        FIXED_NODE_ENV: json.dumps(node),
    }
    with open(state_dir / "gateway.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.unauthenticated_gateway"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_until_healthy(
    port: int, ca_cert: Path, process: subprocess.Popen[bytes], scratch: Path
) -> None:
    """Until /healthz says the node, config and live-query caches hold their snapshots."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    url = f"https://localhost:{port}/healthz"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    log = (scratch / "unauthenticated-gateway" / "gateway.log").read_text(errors="replace")
    stop_process(process)
    raise RuntimeError(f"the unauthenticated gateway did not become healthy:\n{log}")


# --- the real gateway's counters ------------------------------------------------------------


def gateway_metrics_url(cluster: QuarryCluster) -> str:
    settings = cluster.settings
    return f"http://127.0.0.1:{settings.metrics_port('gateway')}/metrics"


def gateway_counters(metrics_url: str, endpoint: str) -> dict[str, float]:
    """Node-cache lookups by result, and `requests` answered on this endpoint, so far."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counters = {"requests": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # _created timestamps
            if family.name == NODE_CACHE_FAMILY:
                result = sample.labels["result"]
                counters[result] = counters.get(result, 0.0) + sample.value
            elif family.name == REQUESTS_FAMILY and sample.labels["endpoint"] == endpoint:
                counters["requests"] += sample.value
    return counters


def node_cache_report(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the authenticated run added: requests answered, lookups by result."""
    added = {name: int(after.get(name, 0) - before.get(name, 0)) for name in after}
    requests = added.pop("requests")
    lookups = {name: count for name, count in added.items() if count}
    return {
        "requests_answered": requests,  # warm-up and late answers included
        "lookups": lookups,
        "hits": lookups.get("hit", 0),
        "enroll_service_calls": sum(lookups.get(name, 0) for name in SERVICE_LOOKUPS),
    }
