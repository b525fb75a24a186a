"""`python -m bench` (what `make bench` runs): Quarry under two standard simulated fleets.

One run, on this machine:
1. for each workload (bench/workloads.py: `fleet`, two packs of differential results, and
   `events`, 20 event lines gzip every flush from every host), starts a cluster the way
   `quarry up` does, sets the workload's config, simulates N osquery hosts (bench/fleet.py)
   at Fleet's intervals, and over a measured steady-state window samples every server
   process's CPU and memory from /proc and ingest's inserts from its /metrics; then checks
   that the log rows ClickHouse holds equal the rows osquery was told were stored. For
   `events` it also times 20-line gzip POSTs until their rows are visible, fleet running;
2. on the last workload's cluster, runs the optional phases whose modules exist (memory per
   idle keep-alive connection: bench/idle_connections.py), then saturates Quarry's hot paths
   (distributed read, config, log POST) with a closed loop, and times 1024-line gzip log
   POSTs sent at a moderate fixed rate until their rows are visible in ClickHouse
   (bench/visibility_latency.py); then saturates the distributed read and config on the real
   gateway and on the same gateway with authentication skipped (bench/authentication_cost.py);
3. measures the physical ceilings in the same way: a bare Starlette HTTPS endpoint answering
   the same bytes, and raw inserts of the same rows into the same ClickHouse;
4. writes a markdown report and JSON to --out, and prints the markdown (the two workloads
   side by side first).

`--sweep` instead raises N stage by stage until the error rate exceeds 2% or a p95 latency
exceeds 1 s, and reports the last good N, for each selected workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from bench import enrollment_storm, environment, idle_connections, report
from bench.authentication_cost import measure_authentication_cost
from bench.ceilings import http_ceiling, storage_ceiling
from bench.event_payloads import numbered_log_body_factory
from bench.saturation import SaturationTarget, run_saturation
from bench.visibility_latency import measure_visibility, rows_per_counter
from bench.workloads import WORKLOADS, Workload, measure_workload, osquery_config
from protos.v1 import logs_pb2_grpc
from quarry.encryption.gateway_certificates import TlsFiles
from tests.emulator import HostProfile, OsqueryNode, log_records, osquery_ssl_context
from tests.emulator.http_client import ServerAddress
from tests.quarry_cluster import QuarryCluster, quarry_cluster

LOG_ROWS_PER_POST = 20
FULL_BATCH_LINES = 1024  # --logger_tls_max_lines
# Rows are stored under the enrolled node's identity, so the probe is found by query name.
FULL_BATCH_QUERY = "pack_bench_full_batches"
LATENCY_QUERY = "pack_bench_visibility_latency"
MAX_ERROR_RATE = 0.02
MAX_P95_MS = 1000.0
CLUSTER_LOG_LINES_ON_FAILURE = 60
PORTS_PER_CLUSTER = 100  # --port-base: the workloads' clusters at base, base + 100
# Phases that other modules provide, run when the module exists: bench/NAME.py with
# `measure(cluster, args) -> dict` (JSON-ready; the report prints its figures).
IDLE_CONNECTIONS = 1_000
# --quick: a smoke run of seconds (tests/test_bench_smoke.py); options given still win.
QUICK = {
    "hosts": 12,
    "duration": 6.0,
    "start_period": 2.0,
    "config_interval": 4.0,
    "log_interval": 2.0,
    "distributed_interval": 2.0,
    "query_interval_scale": 0.05,
    "connections": 2,
    "log_connections": 4,
    "saturation_seconds": 0.5,
    "latency_rate": 5.0,
    "latency_seconds": 1.0,
    "events_latency_rate": 5.0,
    "idle_connections": 20,
    "storm_new_hosts": 20,
    "storm_enrolled_hosts": 4,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workload",
        choices=("fleet", "events", "both"),
        default="both",
        help="which standard workload to run (default both, reported side by side)",
    )
    parser.add_argument("--hosts", type=int, default=2000, help="simulated hosts (default 2000)")
    parser.add_argument(
        "--duration",
        type=float,
        default=90.0,
        help="seconds of the measured steady-state window (default 90), after start-up",
    )
    parser.add_argument(
        "--start-period", type=float, default=30.0, help="seconds over which enrollments are spread"
    )
    parser.add_argument("--config-interval", type=float, default=60.0)
    parser.add_argument("--log-interval", type=float, default=10.0)
    parser.add_argument("--distributed-interval", type=float, default=10.0)
    parser.add_argument(
        "--query-interval-scale",
        type=float,
        default=1.0,
        help="multiplies the fleet packs' query intervals (--quick: 0.05)",
    )
    parser.add_argument(
        "--gzip", action="store_true", help="gzip the fleet workload's log bodies (events: always)"
    )
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument(
        "--vitals-interval",
        type=int,
        default=0,
        help="seconds between each host's vitals answers (default 0: off, as before the"
        " inventory; production's default is 3600; docs/inventory.md)",
    )
    parser.add_argument(
        "--software-interval",
        type=int,
        default=0,
        help="seconds between each host's software inventories (default 0: off; production 86400)",
    )
    parser.add_argument(
        "--clickhouse-url", default="", help="a ClickHouse server (default: embedded chdb)"
    )
    parser.add_argument(
        "--port-base", type=int, default=0, help="the clusters' port base (default: a free one)"
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
        "--latency-seconds",
        type=float,
        default=10.0,
        help="seconds of each POST-to-visible timing (default 10)",
    )
    parser.add_argument(
        "--events-latency-rate",
        type=float,
        default=10.0,
        help="20-line gzip POSTs per second timed to visible beside the events fleet (default 10)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of seconds, 12 hosts (for the tests)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="raise --hosts stage by stage (x2) until it breaks"
    )
    parser.add_argument("--max-hosts", type=int, default=64_000, help="sweep upper bound")
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=IDLE_CONNECTIONS,
        help="keep-alive connections opened to measure the gateway's memory per idle one",
    )
    parser.add_argument(
        "--skip-enrollment-storm", action="store_true", help="leave out the enrollment storm"
    )
    enrollment_storm.add_arguments(parser)
    parser.add_argument("--out", default="bench-results", help="folder for report.md and .json")
    parser.add_argument("--json", action="store_true", help="print the JSON, not the markdown")
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.hosts < 1 or args.max_hosts < 1:
        parser.error("--hosts and --max-hosts must be at least 1")
    positive = ("duration", "config_interval", "log_interval", "distributed_interval",
                "query_interval_scale", "saturation_seconds", "latency_rate", "latency_seconds",
                "events_latency_rate")  # fmt: skip
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.start_period < 0:
        parser.error("--start-period must not be negative")
    if args.vitals_interval < 0 or args.software_interval < 0:
        parser.error("--vitals-interval and --software-interval must not be negative (0: off)")
    return args


def selected_workloads(args: argparse.Namespace) -> list[Workload]:
    names = ("fleet", "events") if args.workload == "both" else (args.workload,)
    return [WORKLOADS[name] for name in names]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextmanager
def bench_cluster(args: argparse.Namespace, scratch: Path, index: int) -> Iterator[QuarryCluster]:
    """The cluster of one workload: its own processes and state directory."""
    env = {
        "QUARRY_GATEWAY_WORKERS": str(args.gateway_workers),
        "QUARRY_HOST_VITALS_INTERVAL_S": str(args.vitals_interval),
        "QUARRY_HOST_SOFTWARE_INTERVAL_S": str(args.software_interval),
    }
    port_base = args.port_base + index * PORTS_PER_CLUSTER if args.port_base else None
    scratch.mkdir(parents=True, exist_ok=True)
    with quarry_cluster(scratch, args.clickhouse_url, env, port_base) as cluster:
        try:
            yield cluster
        except Exception:
            # The scratch directory goes with the run: show what the cluster said first.
            tail = cluster.log_text().splitlines()[-CLUSTER_LOG_LINES_ON_FAILURE:]
            progress("the run failed; the cluster's last output:\n" + "\n".join(tail))
            raise


def set_workload_config(
    cluster: QuarryCluster, workload: Workload, args: argparse.Namespace, scratch: Path
) -> bytes:
    """Set the workload's osquery config on the server; its bytes, for the HTTP ceiling."""
    config_bytes = json.dumps(osquery_config(workload, args), separators=(",", ":")).encode()
    config_file = scratch / f"{workload.name}-config.json"
    config_file.write_bytes(config_bytes)
    cluster.cli("config", "set", "-f", str(config_file))
    return config_bytes


# --- the phases on the last workload's cluster ----------------------------------------------


def optional_phases(cluster: QuarryCluster, args: argparse.Namespace) -> dict[str, Any]:
    """Gateway memory per idle keep-alive connection (bench/idle_connections.py), and an
    enrollment storm (bench/enrollment_storm.py) unless --skip-enrollment-storm."""
    progress(f"measuring gateway memory of {args.idle_connections} idle keep-alive connections")
    gateway = idle_connections.gateway_of(cluster.state_dir, cluster.port_base)
    figures: dict[str, Any] = {
        "idle_connections": asyncio.run(
            idle_connections.measure(gateway, args.idle_connections)
        ).as_dict()
    }
    if args.skip_enrollment_storm:
        figures["enrollment_storm"] = {"skipped": "--skip-enrollment-storm"}
    else:
        progress("enrollment storm: new hosts enrolling while enrolled hosts check in")
        figures["enrollment_storm"] = enrollment_storm.run_enrollment_storm(
            cluster, enrollment_storm.storm_config(args)
        )
    return figures


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


def full_batches_to_visible(
    cluster: QuarryCluster, address: ServerAddress, context, node_key: str, args
) -> dict[str, Any]:
    """Rows/s from 1024-line gzip POSTs to rows visible in ClickHouse (issue 4's figure)."""
    host = f"full-batches-{cluster.port_base}"
    progress(f"saturating Quarry's log path with 1024-line gzip POSTs, {args.connections} conns")
    target = SaturationTarget(
        address, context, "/api/v1/osquery/log",
        numbered_log_body_factory(node_key, host, FULL_BATCH_QUERY, FULL_BATCH_LINES),
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
    the other.
    """
    host = f"visibility-{cluster.port_base}"
    progress(
        f"timing 1024-line gzip POSTs to visible rows at {args.latency_rate:g}/s "
        f"for {args.latency_seconds:g} s"
    )
    target = SaturationTarget(
        address, context, "/api/v1/osquery/log",
        numbered_log_body_factory(node_key, host, LATENCY_QUERY, FULL_BATCH_LINES),
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


# --- the whole run ------------------------------------------------------------------------


def standard_run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    workloads = selected_workloads(args)
    measured: dict[str, Any] = {}
    for index, workload in enumerate(workloads):
        with bench_cluster(args, scratch / workload.name, index) as cluster:
            config_bytes = set_workload_config(cluster, workload, args, scratch)
            node_key = enrolled_node_key(cluster)
            progress(f"workload {workload.name}: {args.hosts} hosts, {args.duration:g} s window")
            measured[workload.name] = measure_workload(
                cluster, workload, args, args.hosts, node_key
            )
            if index < len(workloads) - 1:
                continue
            phases = optional_phases(cluster, args)
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
            server_version = cluster.sql("SELECT version() AS v")[0]["v"]
            tls = TlsFiles(
                cluster.ca_cert,
                cluster.state_dir / "tls/server.pem",
                cluster.state_dir / "tls/server.key",
            )
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
        "workloads": measured,
        "phases": phases,
        "saturation": {
            "quarry": quarry,
            "authentication": authentication,
            "bare_https": bare,
            "storage": storage,
        },
        "ratios": ratios(quarry, authentication, bare, storage),
    }


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
    sweeps = {}
    for index, workload in enumerate(selected_workloads(args)):
        with bench_cluster(args, scratch / workload.name, index) as cluster:
            set_workload_config(cluster, workload, args, scratch)
            node_key = enrolled_node_key(cluster)
            sweeps[workload.name] = sweep_one(cluster, workload, args, node_key)
            server_version = cluster.sql("SELECT version() AS v")[0]["v"]
    return {
        "environment": environment.describe(server_version),
        "settings": vars(args),
        "sweep": sweeps,
    }


def sweep_one(
    cluster: QuarryCluster, workload: Workload, args: argparse.Namespace, node_key: str
) -> dict[str, Any]:
    stages = []
    hosts = args.hosts
    while hosts <= args.max_hosts:
        progress(f"sweep {workload.name}: {hosts} hosts, {args.duration:g} s window")
        measured = measure_workload(cluster, workload, args, hosts, node_key)
        verdict = stage_verdict(measured.get("window") or measured["fleet"])
        stages.append({"hosts": hosts, "verdict": verdict, **measured})
        if verdict:
            break
        hosts *= 2
    good = [s["hosts"] for s in stages if not s["verdict"]]
    return {"stages": stages, "last_good_hosts": good[-1] if good else None}


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


def rows_all_equal(figures: dict[str, Any]) -> bool:
    """Every workload (or sweep stage) stored exactly the rows it was told were stored."""
    runs = list(figures.get("workloads", {}).values())
    for workload_sweep in figures.get("sweep", {}).values():
        runs += workload_sweep["stages"]
    return all(run["rows_check"]["equal"] for run in runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="quarry-bench-") as scratch:
        run = sweep if args.sweep else standard_run
        figures = run(args, Path(scratch))
    figures["run_seconds"] = round(time.monotonic() - started, 1)
    markdown = report.render(figures)
    (out / "report.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown)
    print(json.dumps(figures, indent=2, default=str) if args.json else markdown)
    progress(f"written {out / 'report.md'} and {out / 'report.json'}")
    return 0 if rows_all_equal(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
