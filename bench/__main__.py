"""`python -m bench` (what `make bench` runs): Quarry under a simulated osquery fleet.

One run, on this machine:
1. starts a cluster the way `quarry up` does, sets the benchmark's packs as the config;
2. simulates N osquery hosts (bench/fleet.py) at Fleet's load-test intervals, launches a
   live query mid-run, and samples every server process's CPU and memory from /proc;
3. checks that the log rows ClickHouse holds equal the rows osquery was told were stored;
4. saturates Quarry's hot paths (distributed read, config, log POST) with a closed loop,
   and times 1024-line gzip log POSTs sent at a moderate fixed rate until their rows are
   visible in ClickHouse (bench/visibility_latency.py); then saturates the distributed read
   and config on the real gateway and on the same gateway with authentication skipped
   (bench/authentication_cost.py);
5. runs an enrollment storm (bench/enrollment_storm.py; --skip-enrollment-storm leaves it out);
6. measures the physical ceilings in the same way: a bare Starlette HTTPS endpoint answering
   the same bytes, and raw inserts of the same rows into the same ClickHouse;
7. writes a markdown report and JSON to --out, and prints the markdown.

`--sweep` instead raises N stage by stage until the error rate exceeds 2% or a p95 latency
exceeds 1 s, and reports the last good N.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from bench import enrollment_storm, environment, report
from bench.authentication_cost import measure_authentication_cost
from bench.ceilings import http_ceiling, storage_ceiling
from bench.fleet import FleetConfig, FleetResult, run_fleet
from bench.payloads import FIRST_RUN_WINDOW_S, config_for_packs
from bench.process_costs import (
    ProcessSampler,
    costs_report,
    find_clickhouse_pid,
    find_quarry_service_pids,
    hosts_per_core,
)
from bench.saturation import SaturationTarget, run_saturation
from bench.visibility_latency import RowCounter, measure_visibility
from gateway.tls_bootstrap import TlsFiles
from protos.v1 import distributed_pb2, distributed_pb2_grpc, logs_pb2, logs_pb2_grpc
from tests.emulator import HostProfile, OsqueryNode, log_records, osquery_ssl_context
from tests.emulator.http_client import ServerAddress
from tests.quarry_cluster import QuarryCluster, quarry_cluster

LIVE_QUERY_SQL = "SELECT hostname, cpu_brand, physical_memory FROM system_info"
LOG_ROWS_PER_POST = 20
FULL_BATCH_LINES = 1024  # --logger_tls_max_lines
MARKER_COUNTER = 987_654_321
# Rows are stored under the enrolled node's identity, so the probe is found by query name.
FULL_BATCH_QUERY = "pack_bench_full_batches"
LATENCY_QUERY = "pack_bench_visibility_latency"
MAX_ERROR_RATE = 0.02
MAX_P95_MS = 1000.0
MIN_STEADY_WINDOW_S = 30.0


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=2000, help="simulated hosts (default 2000)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of fleet load")
    parser.add_argument(
        "--start-period", type=float, default=30.0, help="seconds over which enrollments are spread"
    )
    parser.add_argument("--config-interval", type=float, default=60.0)
    parser.add_argument("--log-interval", type=float, default=10.0)
    parser.add_argument("--distributed-interval", type=float, default=10.0)
    parser.add_argument("--gzip", action="store_true", help="gzip log bodies (logger_tls_compress)")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument(
        "--clickhouse-url", default="", help="a ClickHouse server (default: embedded chdb)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="concurrent connections of the saturation probes",
    )
    parser.add_argument(
        "--log-connections",
        type=int,
        default=256,
        help="connections of the log-path probe: log POSTs wait for group commit, so "
        "throughput needs a fleet's concurrency",
    )
    parser.add_argument("--saturation-seconds", type=float, default=10.0)
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=20.0,
        help="1024-line gzip log POSTs per second while timing POST-to-visible (default 20)",
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=10.0, help="seconds of POST-to-visible timing"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="raise --hosts stage by stage (x2) until it breaks"
    )
    parser.add_argument("--max-hosts", type=int, default=64_000, help="sweep upper bound")
    parser.add_argument(
        "--skip-enrollment-storm", action="store_true", help="leave out the enrollment storm"
    )
    enrollment_storm.add_arguments(parser)
    parser.add_argument("--out", default="bench-results", help="folder for report.md and .json")
    parser.add_argument("--json", action="store_true", help="print the JSON, not the markdown")
    return parser.parse_args(argv)


def fleet_config(args: argparse.Namespace, cluster: QuarryCluster, hosts: int) -> FleetConfig:
    return FleetConfig(
        hosts=hosts,
        server=cluster.gateway,
        ca_file=str(cluster.ca_cert),
        enroll_secret=cluster.enroll_secret,
        duration_s=args.duration,
        start_period_s=min(args.start_period, args.duration / 2),
        config_interval_s=args.config_interval,
        log_interval_s=args.log_interval,
        distributed_interval_s=args.distributed_interval,
        gzip=args.gzip,
        seed=time.time_ns() % 1_000_000_000,  # a fresh host prefix: rows counted per run
    )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- the fleet run ------------------------------------------------------------------------


def live_query_launcher(cluster: QuarryCluster):
    async def launch() -> str:
        async with cluster.aio_channel("distributed") as channel:
            stub = distributed_pb2_grpc.DistributedServiceStub(channel)
            campaign = await stub.StartQuery(
                distributed_pb2.StartQueryRequest(sql=LIVE_QUERY_SQL, author="bench"), timeout=60
            )
        return campaign.campaign_id

    return launch


def run_measured_fleet(
    cluster: QuarryCluster, config: FleetConfig, clickhouse_url: str
) -> dict[str, Any]:
    """The fleet for one stage, with the server side's CPU and memory sampled meanwhile."""
    assert cluster.process is not None
    pids = find_quarry_service_pids(cluster.process.pid)
    if clickhouse_url:
        pids["clickhouse"] = find_clickhouse_pid(port=_port_of(clickhouse_url))
    live = [(config.duration_s / 2, live_query_launcher(cluster))]
    # Steady state: after every host enrolled and sent its first full result sets.
    steady_from_s = config.start_period_s + FIRST_RUN_WINDOW_S
    steady = ProcessSampler(pids)
    steady_timer = threading.Timer(steady_from_s, steady.start)
    if steady_from_s + MIN_STEADY_WINDOW_S <= config.duration_s:
        steady_timer.start()
    with ProcessSampler(pids) as sampler:
        result: FleetResult = asyncio.run(run_fleet(config, live))
        costs = sampler.stop()
    steady_timer.cancel()
    measured = {
        "fleet": result.to_dict(),
        "costs": cost_model(costs_report(costs), result, result.host_seconds),
        "rows_check": rows_check(cluster, result),
    }
    if steady.started:
        window_s = result.wall_s - steady_from_s
        steady_costs = costs_report(steady.stop())
        measured["steady_costs"] = {
            "from_s": steady_from_s,
            "window_s": window_s,
            **cost_model(steady_costs, result, result.hosts_enrolled * window_s),
        }
    return measured


def cost_model(
    costs: dict[str, dict[str, Any]], result: FleetResult, host_seconds: float
) -> dict[str, Any]:
    server_cpu_s = costs["total"]["cpu_s"]
    per_host_second = server_cpu_s / host_seconds if host_seconds else 0.0
    enrolled = max(result.hosts_enrolled, 1)
    return {
        "processes": costs,
        "server_cpu_s": server_cpu_s,
        "client_cpu_s": result.client_cpu_s,
        "host_seconds": host_seconds,
        "cpu_s_per_host_second": per_host_second,
        "hosts_per_core": hosts_per_core(per_host_second) if per_host_second else None,
        "rss_per_10k_hosts_mb": {
            name: figures["rss_max_bytes"] * 10_000 / enrolled / 2**20
            for name, figures in costs.items()
        },
    }


def rows_check(cluster: QuarryCluster, result: FleetResult) -> dict[str, Any]:
    """Rows osquery was told are stored, against rows ClickHouse holds for this run."""
    prefix = result.config.identifier_prefix.replace("'", "")
    found = {}
    for kind, table in (("results", "quarry.results"), ("status", "quarry.status_logs")):
        rows = cluster.sql(
            f"SELECT count() AS n FROM {table} WHERE startsWith(host_identifier, '{prefix}-')"
        )
        found[kind] = int(rows[0]["n"])
    accepted = result.rows_accepted
    return {"accepted": accepted, "found": found, "equal": accepted == found}


# --- saturation probes --------------------------------------------------------------------


def enrolled_node_key(cluster: QuarryCluster) -> str:
    async def enroll() -> str:
        profile = HostProfile.make(0, seed=cluster.port_base)
        async with OsqueryNode(
            server=cluster.gateway,
            ca_file=cluster.ca_cert,
            enroll_secret=cluster.enroll_secret,
            profile=profile,
            host_identifier=f"saturation-{cluster.port_base}",
        ) as node:
            return await node.get_node_key()

    return asyncio.run(enroll())


def log_body_factory(node_key: str, host: str):
    """A log POST of LOG_ROWS_PER_POST event rows, different for every request number."""

    def body(number: int) -> bytes:
        records = log_records.event_records(
            "pack_bench_saturation",
            host,
            1_736_072_430 + number,
            counter=number,
            added=[
                {"pid": str(i), "name": f"proc{i}", "n": str(number)}
                for i in range(LOG_ROWS_PER_POST)
            ],
        )
        return orjson.dumps({"data": records, "log_type": "result", "node_key": node_key})

    return body


def saturate_quarry(
    cluster: QuarryCluster, node_key: str, args: argparse.Namespace
) -> dict[str, Any]:
    host, port = cluster.gateway.split(":")
    address = ServerAddress(host, int(port))
    context = osquery_ssl_context(cluster.ca_cert)
    key_body = orjson.dumps({"node_key": node_key})
    log_body = log_body_factory(node_key, f"saturation-{port}")
    targets = {
        "distributed_read": ("/api/v1/osquery/distributed/read", key_body, args.connections),
        "config": ("/api/v1/osquery/config", key_body, args.connections),
        "log": ("/api/v1/osquery/log", log_body, args.log_connections),
    }
    figures = {}
    for name, (path, body, connections) in targets.items():
        progress(f"saturating Quarry's {name} with {connections} connections")
        target = SaturationTarget(address, context, path, body, node_key=node_key)
        figures[name] = run_saturation(
            target, connections=connections, duration_s=args.saturation_seconds
        ).as_dict()
        figures[name]["connections"] = connections
    figures["log"]["rows_per_s"] = figures["log"]["requests_per_s"] * LOG_ROWS_PER_POST
    figures["log_full_batches"] = full_batches_to_visible(cluster, address, context, node_key, args)
    figures["log_post_to_visible"] = post_to_visible_latency(
        cluster, address, context, node_key, args
    )
    return figures


def full_batch_body_factory(node_key: str, host: str, query_name: str = FULL_BATCH_QUERY):
    """osquery's largest log POST: 1024 event lines, gzip; different for every number.

    The JSON is built once with a marker in place of each line's counter, so a request costs
    a replace and a gzip (level 1: the server's gunzip is the same for any level, and the
    client shares the machine).
    """
    records = log_records.event_records(
        query_name, host, 1_736_072_430, counter=MARKER_COUNTER,
        added=[{"pid": str(i), "name": f"proc{i}", "path": f"/usr/bin/proc{i}"}
               for i in range(FULL_BATCH_LINES)],
    )  # fmt: skip
    template = orjson.dumps({"data": records, "log_type": "result", "node_key": node_key})
    marker = f'"counter":{MARKER_COUNTER}'.encode()

    def body(number: int) -> bytes:
        return gzip.compress(template.replace(marker, f'"counter":{number}'.encode()), 1)

    return body


def full_batches_to_visible(
    cluster: QuarryCluster, address: ServerAddress, context, node_key: str, args
) -> dict[str, Any]:
    """Rows/s from 1024-line gzip POSTs to rows visible in ClickHouse (issue 4's figure)."""
    host = f"full-batches-{cluster.port_base}"
    progress(f"saturating Quarry's log path with 1024-line gzip POSTs, {args.connections} conns")
    target = SaturationTarget(
        address, context, "/api/v1/osquery/log", full_batch_body_factory(node_key, host),
        node_key=node_key, compressed=True,
    )  # fmt: skip
    started = time.monotonic()
    result = run_saturation(
        target, connections=args.connections, duration_s=args.saturation_seconds
    )
    acked_rows = (result.requests - result.errors) * FULL_BATCH_LINES
    visible, visible_at = 0, time.monotonic()
    deadline = visible_at + 120
    while time.monotonic() < deadline:
        count = int(cluster.sql(
            f"SELECT count() AS n FROM quarry.results WHERE name = '{FULL_BATCH_QUERY}'"
        )[0]["n"])  # fmt: skip
        if count > visible:
            visible, visible_at = count, time.monotonic()
        elif count >= acked_rows:
            break  # stable and complete: requests in flight at the end have landed too
        time.sleep(0.5)
    seconds = visible_at - started
    return {
        **result.as_dict(),
        "connections": args.connections,
        "lines_per_post": FULL_BATCH_LINES,
        "rows_acked_in_window": acked_rows,
        "rows_visible": visible,
        "seconds_to_visible": round(seconds, 3),
        "rows_visible_per_s": round(visible / seconds, 1) if seconds > 0 else 0.0,
    }


def post_to_visible_latency(
    cluster: QuarryCluster, address: ServerAddress, context, node_key: str, args
) -> dict[str, Any]:
    """p50/p99/max from sending a 1024-line gzip POST to all its rows visible in ClickHouse.

    Runs after the throughput probe, at a fixed moderate rate, so neither figure disturbs
    the other. Row counts come from the LogStore gRPC service (what `quarry sql` calls), the
    one reader that works for embedded chdb as for a ClickHouse server.
    """
    host = f"visibility-{cluster.port_base}"
    progress(
        f"timing 1024-line gzip POSTs to visible rows at {args.latency_rate:g}/s "
        f"for {args.latency_seconds:g} s"
    )
    target = SaturationTarget(
        address, context, "/api/v1/osquery/log",
        full_batch_body_factory(node_key, host, LATENCY_QUERY),
        node_key=node_key, compressed=True,
    )  # fmt: skip

    async def measure() -> dict[str, Any]:
        async with cluster.aio_channel("ingest") as channel:
            result = await measure_visibility(
                target,
                rows_per_counter(logs_pb2_grpc.LogStoreStub(channel), LATENCY_QUERY),
                lines_per_post=FULL_BATCH_LINES,
                rate_per_s=args.latency_rate,
                duration_s=args.latency_seconds,
            )
        return result.as_dict()

    return asyncio.run(measure())


def rows_per_counter(stub: logs_pb2_grpc.LogStoreStub, query_name: str) -> RowCounter:
    """Rows stored per log `counter` of one query, from `lowest` up, read through LogStore."""

    async def count(lowest: int) -> dict[int, int]:
        sql = (
            f"SELECT counter, count() AS n FROM quarry.results "
            f"WHERE name = '{query_name}' AND counter >= {lowest} GROUP BY counter"
        )
        reply = await stub.Query(logs_pb2.SqlRequest(sql=sql), timeout=30)
        if reply.error:
            raise RuntimeError(reply.error)
        return {int(c): int(n) for c, n in map(orjson.loads, reply.rows_json)}

    return count


# --- the whole run ------------------------------------------------------------------------


def standard_run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    env = {"QUARRY_GATEWAY_WORKERS": str(args.gateway_workers)}
    with quarry_cluster(scratch, args.clickhouse_url, env) as cluster:
        set_bench_config(cluster, scratch)
        config = fleet_config(args, cluster, args.hosts)
        progress(f"simulating {config.hosts} hosts for {config.duration_s:g} s")
        measured = run_measured_fleet(cluster, config, args.clickhouse_url)
        node_key = enrolled_node_key(cluster)
        quarry = saturate_quarry(cluster, node_key, args)
        progress("saturating the real gateway and one with authentication skipped")
        authentication = measure_authentication_cost(
            cluster,
            node_key,
            workers=args.gateway_workers,
            connections=args.connections,
            duration_s=args.saturation_seconds,
            scratch=scratch,
        )
        storm = None
        if not args.skip_enrollment_storm:
            progress("enrollment storm: new hosts enrolling while enrolled hosts check in")
            storm = enrollment_storm.run_enrollment_storm(
                cluster, enrollment_storm.storm_config(args)
            )
        server_version = cluster.sql("SELECT version() AS v")[0]["v"]
        tls = TlsFiles(
            cluster.ca_cert,
            cluster.state_dir / "tls/server.pem",
            cluster.state_dir / "tls/server.key",
        )
        config_bytes = json.dumps(config_for_packs(), separators=(",", ":")).encode()
    progress("measuring the bare HTTPS ceiling")
    bare = http_ceiling(
        tls,
        args.gateway_workers,
        args.connections,
        args.saturation_seconds,
        config_bytes=config_bytes,
    )
    progress("measuring the storage ceiling")
    storage = storage_ceiling(args.clickhouse_url, chdb_dir=scratch / "ceiling-chdb")
    return {
        "environment": environment.describe(server_version),
        "settings": vars(args),
        **measured,
        "saturation": {
            "quarry": quarry,
            "authentication": authentication,
            "bare_https": bare,
            "storage": storage,
        },
        "ratios": ratios(quarry, authentication, bare, storage),
        "enrollment_storm": storm,
    }


def set_bench_config(cluster: QuarryCluster, scratch: Path) -> None:
    config_file = scratch / "bench-config.json"
    config_file.write_text(json.dumps(config_for_packs()))
    cluster.cli("config", "set", "-f", str(config_file))


def ratios(
    quarry: dict, authentication: dict, bare: dict, storage: dict
) -> dict[str, float | None]:
    def share(ours: float, ceiling: float) -> float | None:
        return round(ours / ceiling, 3) if ceiling else None

    return {
        "distributed_read_vs_bare_https": share(
            quarry["distributed_read"]["requests_per_s"],
            bare["distributed_read"]["requests_per_s"],
        ),
        "config_vs_bare_https": share(
            quarry["config"]["requests_per_s"], bare["config"]["requests_per_s"]
        ),
        "distributed_read_authenticated_vs_skipped": authentication["distributed_read"]["ratio"],
        "config_authenticated_vs_skipped": authentication["config"]["ratio"],
        "log_rows_vs_raw_inserts": share(quarry["log"]["rows_per_s"], storage["rows_per_s"]),
        "full_batches_visible_vs_raw_inserts": share(
            quarry["log_full_batches"]["rows_visible_per_s"], storage["rows_per_s"]
        ),
    }


def sweep(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    stages = []
    env = {"QUARRY_GATEWAY_WORKERS": str(args.gateway_workers)}
    with quarry_cluster(scratch, args.clickhouse_url, env) as cluster:
        set_bench_config(cluster, scratch)
        hosts = args.hosts
        while hosts <= args.max_hosts:
            progress(f"sweep stage: {hosts} hosts for {args.duration:g} s")
            measured = run_measured_fleet(
                cluster, fleet_config(args, cluster, hosts), args.clickhouse_url
            )
            verdict = stage_verdict(measured["fleet"])
            stages.append({"hosts": hosts, "verdict": verdict, **measured})
            if verdict:
                break
            hosts *= 2
        server_version = cluster.sql("SELECT version() AS v")[0]["v"]
    good = [s["hosts"] for s in stages if not s["verdict"]]
    return {
        "environment": environment.describe(server_version),
        "settings": vars(args),
        "sweep": {"stages": stages, "last_good_hosts": good[-1] if good else None},
    }


def stage_verdict(fleet: dict[str, Any]) -> str:
    """Why the stage broke the limits ("" when it did not)."""
    requests = sum(e["requests"] for e in fleet["endpoints"].values())
    errors = sum(e["errors"] for e in fleet["endpoints"].values())
    if requests and errors / requests > MAX_ERROR_RATE:
        return f"error rate {errors / requests:.1%} > {MAX_ERROR_RATE:.0%}"
    for name, stats in fleet["endpoints"].items():
        if (stats["p95_ms"] or 0) > MAX_P95_MS:
            return f"{name} p95 {stats['p95_ms']:.0f} ms > {MAX_P95_MS:.0f} ms"
    return ""


def _port_of(url: str) -> int:
    return int(url.split("@", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quarry-bench-") as scratch:
        run = sweep if args.sweep else standard_run
        figures = run(args, Path(scratch))
    markdown = report.render(figures)
    if figures.get("enrollment_storm"):
        markdown += "\n" + enrollment_storm.markdown(figures["enrollment_storm"])
    (out / "report.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown)
    print(json.dumps(figures, indent=2, default=str) if args.json else markdown)
    progress(f"written {out / 'report.md'} and {out / 'report.json'}")
    rows_ok = all(
        s.get("rows_check", {}).get("equal", True)
        for s in figures.get("sweep", {}).get("stages", [figures])
    )
    return 0 if rows_ok else 1


if __name__ == "__main__":
    sys.exit(main())
