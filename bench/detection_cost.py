"""`python -m bench.detection_cost`: what a detection rule costs to evaluate, and how long a
matching row takes to become a delivered alert (docs/performance.md, "Detections").

One run on this machine, on a cluster started the way `quarry up` does (embedded chdb, or
--clickhouse-url), with a webhook receiver that notes when each alert arrives:

1. evaluation cost: N process rows are logged through the gateway; the starter rule
   `processes-from-tmp` is run over windows holding them (DetectionService.TestDetection,
   the engine's own SQL path through ingest), next to a plain `count()` over the same
   window (LogStore.Query), in the same run, so the figure is the rule's cost over the
   store's own floor;
2. alert latency: for D seconds one host a second logs a process from /tmp (a new dedup
   key each, so each raises an alert), at the given schedule (default 30 s, a rule's default)
   and the default settle delay; each latency runs from the gateway's answer to the log
   POST (the row is durable) to the webhook's receipt of its `firing` event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import yaml

from protos.v1 import detection_pb2, detection_pb2_grpc, logs_pb2, logs_pb2_grpc
from quarry.serving.grpc_runtime import sync_channel
from tests.alert_receivers import WebhookReceiver, webhook_receiver
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.quarry_cluster import QuarryCluster, quarry_cluster

RULE = "processes-from-tmp"
STARTER = Path(__file__).resolve().parent.parent / "deploy" / "detections" / "starter-rules.yaml"
ROWS_PER_POST = 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


async def log_rows(cluster: QuarryCluster, host: str, paths: list[str]) -> float:
    """Log one process row per path from one host; when the gateway answered the last POST."""
    node = OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=HostProfile.make(abs(hash(host)) % 100_000, seed=cluster.port_base),
        host_identifier=host,
        retry_time_scale=0,
    )
    await node.enroll()
    answered = 0.0
    for start in range(0, len(paths), ROWS_PER_POST):
        rows = [
            {"pid": str(i), "path": p, "cmdline": p}
            for i, p in enumerate(paths[start : start + ROWS_PER_POST])
        ]
        records = log_records.event_records(
            "pack_incident-response_processes", host, int(time.time()), added=rows
        )
        assert await node.send_logs("result", records), node.last_error
        answered = time.time()
    await node.aclose()
    return answered


def evaluation_cost(cluster: QuarryCluster, rows: int, runs: int) -> dict:
    # One in a hundred rows from /tmp: the rule's filter keeps few, as in a real fleet.
    paths = [f"/tmp/bench-{i}" if i % 100 == 0 else f"/usr/bin/tool-{i}" for i in range(rows)]
    asyncio.run(log_rows(cluster, "bench-cost", paths))
    settings = cluster.settings
    admin = os.environ.get("QUARRY_ADMIN_TOKEN", "")
    detection = detection_pb2_grpc.DetectionServiceStub(
        sync_channel(settings.service_addr("detection"), admin or None, settings)
    )
    store = logs_pb2_grpc.LogStoreStub(
        sync_channel(settings.service_addr("ingest"), admin or None, settings)
    )
    count_sql = "SELECT count() FROM quarry.results WHERE stored_at >= now() - 3600"
    rule_s, floor_s, found = [], [], 0
    for _ in range(runs):
        began = time.perf_counter()
        answer = detection.TestDetection(
            detection_pb2.TestDetectionRequest(name=RULE, since_s=3600), timeout=120
        )
        rule_s.append(time.perf_counter() - began)
        assert not answer.error, answer.error
        found = answer.rows
        began = time.perf_counter()
        reply = store.Query(logs_pb2.SqlRequest(sql=count_sql), timeout=120)
        floor_s.append(time.perf_counter() - began)
        assert not reply.error, reply.error
    rule, floor = statistics.median(rule_s), statistics.median(floor_s)
    return {
        "rows_in_window": rows,
        "hits": found,
        "runs": runs,
        "rule_median_s": round(rule, 4),
        "count_median_s": round(floor, 4),
        "rule_over_count": round(rule / floor, 2) if floor else None,
        "rows_per_s": round(rows / rule) if rule else None,
    }


def alert_latency(
    cluster: QuarryCluster, hook: WebhookReceiver, duration_s: int, schedule: int
) -> dict:
    sent: dict[str, float] = {}

    async def one_a_second() -> None:
        for i in range(duration_s):
            host = f"bench-latency-{i}"
            began = time.monotonic()
            sent[host] = await log_rows(cluster, host, [f"/tmp/latency-{i}"])
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))

    asyncio.run(one_a_second())
    deadline = time.monotonic() + schedule + 120
    while time.monotonic() < deadline:
        got = {b["host_identifier"] for b in hook.delivered() if b["event"] == "firing"}
        if set(sent) <= got:
            break
        time.sleep(0.5)
    arrived = {
        body["host_identifier"]: at
        for at, body in hook.arrivals()
        if body["event"] == "firing" and body["host_identifier"] in sent
    }
    latencies = [arrived[h] - sent[h] for h in sent if h in arrived]
    return {
        "schedule_s": schedule,
        "settle_s": cluster.settings.detection_settle_s,
        "alerts_expected": len(sent),
        "alerts_delivered": len(latencies),
        "p50_s": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_s": round(percentile(latencies, 0.99), 1) if latencies else None,
        "max_s": round(max(latencies), 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.detection_cost", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the evaluated window")
    parser.add_argument("--runs", type=int, default=5, help="evaluations to take the median of")
    parser.add_argument("--duration", type=int, default=120, help="seconds of one alert a second")
    parser.add_argument("--schedule", type=int, default=30, help="the rule's schedule, seconds")
    parser.add_argument("--port-base", type=int, default=0, help="the cluster's ports (0: free)")
    parser.add_argument("--clickhouse-url", default="", help="a ClickHouse server (default chdb)")
    args = parser.parse_args()
    os.environ.setdefault("QUARRY_ADMIN_TOKEN", "quarry-bench-root-admin-token")
    with tempfile.TemporaryDirectory() as folder, webhook_receiver(0) as hook:
        root = Path(folder)
        env = {
            "QUARRY_DETECTION_WEBHOOK_URLS": hook.url,
            "QUARRY_ADMIN_TOKEN": os.environ["QUARRY_ADMIN_TOKEN"],
        }
        with quarry_cluster(root, args.clickhouse_url, env, args.port_base or None) as cluster:
            rules = yaml.safe_load(STARTER.read_text())
            rules["detections"][RULE]["schedule"] = args.schedule
            (root / "rules.yaml").write_text(
                yaml.safe_dump({"detections": {RULE: rules["detections"][RULE]}})
            )
            cluster.cli("config", "apply", "-f", str(root / "rules.yaml"))
            report = {
                "store": args.clickhouse_url or "chdb",
                "evaluation": evaluation_cost(cluster, args.rows, args.runs),
                "latency": alert_latency(cluster, hook, args.duration, args.schedule),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as exc:
        raise SystemExit(f"bench.detection_cost: {exc.code().name}: {exc.details()}") from None
