"""The benchmark's two standard workloads, `fleet` and `events`, and how one is measured.

- `fleet`: two packs of differential results (bench/payloads.py). After the first full
  result sets, most flushes carry few or no rows: the quiet steady state of an inventory
  fleet. A live query is launched half-way through the measured window.
- `events`: every log flush of every host carries 20 event-format result lines, gzip, and a
  status batch goes every 60 s (bench/event_payloads.py); each host holds 3 keep-alive TLS
  connections (config, logger, distributed), as osquery does once enrolled. This is a fleet
  that logs process or socket events: small batches from every host all the time.

Both run at Fleet's intervals by default (config 60 s, logs 10 s, distributed 10 s). One
measurement (`measure_workload`) simulates the hosts (bench/fleet.py) in three periods:
start-up (enrollments spread over --start-period, then a warm-up: the first full result sets
for `fleet`, one log and distributed interval for `events`), the measured window of
--duration seconds, and for `events` a visibility phase in which, with the fleet still
running, an open loop of 20-line gzip POSTs is timed until its rows are visible in
ClickHouse (kept out of the window, so the probe's requests do not count as the fleet's).

With a ClickHouse server, each measurement first waits until the server runs no merge, so
merges of earlier rows are not charged to it. Over the window it samples every server
process's CPU and memory from /proc (gateway, ingest, enroll, config, distributed, and the
ClickHouse server process when one is used) and reads ingest's /metrics
(`quarry_ingest_insert_duration_seconds` counts one per insert) at both edges. From those
come hosts per core for the whole stack, each process's CPU per request and per row, and
ClickHouse's inserts per second. After the run, the rows osquery
was told were stored are compared with the rows ClickHouse holds: they must be equal.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client
from prometheus_client.parser import text_string_to_metric_families

from bench.event_payloads import (
    EVENT_LINES_PER_FLUSH,
    config_for_events,
    numbered_log_body_factory,
)
from bench.fleet import FleetConfig, FleetResult, run_fleet
from bench.payloads import FIRST_RUN_WINDOW_S, config_for_packs
from bench.process_costs import (
    ProcessCost,
    ProcessSampler,
    costs_report,
    find_clickhouse_pid,
    find_quarry_service_pids,
    hosts_per_core,
)
from bench.saturation import SaturationTarget
from bench.visibility_latency import measure_visibility, rows_per_counter
from ingest_service.clickhouse_server_store import client_url
from protos.v1 import distributed_pb2, distributed_pb2_grpc, logs_pb2_grpc
from tests.emulator.http_client import ServerAddress, osquery_ssl_context
from tests.quarry_cluster import QuarryCluster

LIVE_QUERY_SQL = "SELECT hostname, cpu_brand, physical_memory FROM system_info"
EVENTS_VISIBILITY_QUERY = "pack_bench_events_visibility"
INSERTS_FAMILY = "quarry_ingest_insert_duration_seconds"
ROWS_INSERTED_FAMILY = "quarry_ingest_rows_inserted"
ROWS_CHECK_TIMEOUT_S = 90.0  # rows acknowledged but still on their way to ClickHouse
ROWS_CHECK_POLL_S = 1.0
VISIBILITY_SETTLE_S = 60.0  # the probe's own limit for a POST's rows to appear
CLICKHOUSE_SETTLE_TIMEOUT_S = 120.0
CLICKHOUSE_SETTLE_POLL_S = 1.0
CLICKHOUSE_IDLE_SAMPLE_S = 5.0


@dataclass(frozen=True)
class Workload:
    name: str
    summary: str
    payload: str  # FleetConfig.payload
    always_gzip: bool  # else --gzip decides
    keep_enroll_connection: bool
    live_query: bool
    visibility_probe: bool


WORKLOADS = {
    "fleet": Workload(
        "fleet",
        "two packs of differential results; a live query mid-window",
        payload="packs",
        always_gzip=False,
        keep_enroll_connection=True,
        live_query=True,
        visibility_probe=False,
    ),
    "events": Workload(
        "events",
        f"{EVENT_LINES_PER_FLUSH} event lines gzip every log flush, a status batch every 60 s, "
        "3 connections per host",
        payload="events",
        always_gzip=True,
        keep_enroll_connection=False,
        live_query=False,
        visibility_probe=True,
    ),
}


# --- what to simulate ---------------------------------------------------------------------


def osquery_config(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """The config set on the server before the run (what the hosts fetch)."""
    intervals = {
        "config_interval_s": args.config_interval,
        "log_interval_s": args.log_interval,
        "distributed_interval_s": args.distributed_interval,
    }
    if workload.payload == "events":
        return config_for_events(**intervals)
    return config_for_packs(**intervals, interval_scale=args.query_interval_scale)


def warm_up_s(workload: Workload, args: argparse.Namespace) -> float:
    """Seconds from the last enrollment to the window: first result sets, first flushes."""
    if workload.payload == "packs":
        return FIRST_RUN_WINDOW_S * args.query_interval_scale
    return max(args.log_interval, args.distributed_interval)


def fleet_config(
    workload: Workload, args: argparse.Namespace, cluster: QuarryCluster, hosts: int
) -> FleetConfig:
    window_from = args.start_period + warm_up_s(workload, args)
    window_until = window_from + args.duration
    extra = args.latency_seconds + VISIBILITY_SETTLE_S if workload.visibility_probe else 0.0
    return FleetConfig(
        hosts=hosts,
        server=cluster.gateway,
        ca_file=str(cluster.ca_cert),
        enroll_secret=cluster.enroll_secret,
        duration_s=window_until + extra,  # the visibility probe stops the run once done
        start_period_s=args.start_period,
        config_interval_s=args.config_interval,
        log_interval_s=args.log_interval,
        distributed_interval_s=args.distributed_interval,
        query_interval_scale=args.query_interval_scale,
        gzip=workload.always_gzip or args.gzip,
        seed=time.time_ns() % 1_000_000_000,  # a fresh host prefix: rows counted per run
        payload=workload.payload,
        keep_enroll_connection=workload.keep_enroll_connection,
        window_from_s=window_from,
        window_until_s=window_until,
    )


# --- the server side over the window -------------------------------------------------------


class ServerSide:
    """WindowHooks: every server process's CPU and RSS, and ingest's insert counters."""

    def __init__(self, pids: dict[str, int], ingest_metrics_url: str) -> None:
        self.sampler = ProcessSampler(pids)
        self.metrics_url = ingest_metrics_url
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.costs: dict[str, ProcessCost] = {}

    def start(self) -> None:
        self.before = ingest_counters(self.metrics_url)
        self.sampler.start()

    def stop(self) -> None:
        self.costs = self.sampler.stop()
        self.after = ingest_counters(self.metrics_url)


def ingest_counters(metrics_url: str) -> dict[str, float]:
    """Inserts into ClickHouse (all tables) and rows inserted so far, from ingest's /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counters = {"inserts": 0.0, "rows_inserted": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == INSERTS_FAMILY and sample.name.endswith("_count"):
                counters["inserts"] += sample.value
            elif family.name == ROWS_INSERTED_FAMILY and sample.name.endswith("_total"):
                counters["rows_inserted"] += sample.value
    return counters


def server_pids(cluster: QuarryCluster, clickhouse_url: str) -> dict[str, int]:
    assert cluster.process is not None
    pids = find_quarry_service_pids(cluster.process.pid)
    if clickhouse_url:
        pids["clickhouse"] = find_clickhouse_pid(port=port_of(clickhouse_url))
    return pids


def settle_clickhouse(clickhouse_url: str) -> float | None:
    """Wait until a ClickHouse server runs no merge; the seconds waited (None: no server).

    A server outlives the workloads (and earlier runs): merges of their rows would otherwise
    be charged to this workload's window.
    """
    if not clickhouse_url:
        return None
    client = Client.from_url(client_url(clickhouse_url, "default"))
    started = time.monotonic()
    try:
        while time.monotonic() - started < CLICKHOUSE_SETTLE_TIMEOUT_S:
            if client.execute("SELECT count() FROM system.merges")[0][0] == 0:
                break
            time.sleep(CLICKHOUSE_SETTLE_POLL_S)
    finally:
        client.disconnect()
    return round(time.monotonic() - started, 1)


def clickhouse_idle_cores(pids: dict[str, int]) -> float | None:
    """The ClickHouse server's CPU with no load (its own background work), in cores."""
    if "clickhouse" not in pids:
        return None
    with ProcessSampler({"clickhouse": pids["clickhouse"]}) as idle:
        time.sleep(CLICKHOUSE_IDLE_SAMPLE_S)
    return round(idle.costs["clickhouse"].cpu_s / CLICKHOUSE_IDLE_SAMPLE_S, 3)


def port_of(url: str) -> int:
    return int(url.split("@", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])


# --- one workload -------------------------------------------------------------------------


def measure_workload(
    cluster: QuarryCluster,
    workload: Workload,
    args: argparse.Namespace,
    hosts: int,
    node_key: str,
) -> dict[str, Any]:
    """Run the workload's fleet on the cluster; its figures as JSON-ready dicts."""
    settled_s = settle_clickhouse(args.clickhouse_url)
    config = fleet_config(workload, args, cluster, hosts)
    pids = server_pids(cluster, args.clickhouse_url)
    idle_cores = clickhouse_idle_cores(pids)
    settings = cluster.settings
    window = ServerSide(pids, f"http://127.0.0.1:{settings.metrics_port('ingest')}/metrics")
    with ProcessSampler(pids) as whole_run:
        result, visibility = asyncio.run(
            run_workload_fleet(cluster, workload, config, window, node_key, args)
        )
    measured: dict[str, Any] = {
        "workload": {"name": workload.name, "summary": workload.summary},
        "fleet": result.to_dict(),
        "costs": cost_model(costs_report(whole_run.costs), result),
        "rows_check": rows_check(cluster, result),
        "host_queries": host_query_counts(cluster, result.config.identifier_prefix),
        "clickhouse_settle_s": settled_s,
        "clickhouse_idle_cores": idle_cores,
    }
    if result.window is not None:
        measured["window"] = window_model(
            result.window, costs_report(window.costs), window, config.distributed_interval_s
        )
    if visibility is not None:
        measured["post_to_visible"] = visibility
    return measured


async def run_workload_fleet(
    cluster: QuarryCluster,
    workload: Workload,
    config: FleetConfig,
    window: ServerSide,
    node_key: str,
    args: argparse.Namespace,
) -> tuple[FleetResult, dict[str, Any] | None]:
    """The fleet; for `events`, then the visibility probe while the fleet keeps running."""
    live = [(config.window_from_s + args.duration / 2, live_query_launcher(cluster))]
    stop = asyncio.Event()
    fleet = asyncio.create_task(
        run_fleet(config, live if workload.live_query else [], stop=stop, hooks=window)
    )
    visibility = None
    if workload.visibility_probe:
        assert config.window_until_s is not None
        # A second past the window's end, so the probe stays out of it; sooner if it failed.
        await asyncio.wait([fleet], timeout=config.window_until_s + 1.0)
        if not fleet.done():
            try:
                visibility = await events_post_to_visible(cluster, node_key, args)
            finally:
                stop.set()
    return await fleet, visibility


def live_query_launcher(cluster: QuarryCluster):
    async def launch() -> str:
        async with cluster.aio_channel("distributed") as channel:
            stub = distributed_pb2_grpc.DistributedServiceStub(channel)
            campaign = await stub.StartQuery(
                distributed_pb2.StartQueryRequest(sql=LIVE_QUERY_SQL, author="bench"), timeout=60
            )
        return campaign.campaign_id

    return launch


async def events_post_to_visible(
    cluster: QuarryCluster, node_key: str, args: argparse.Namespace
) -> dict[str, Any]:
    """p50/p99 from sending an events-sized POST (20 lines, gzip) to its rows visible.

    Sent by a probe node beside the running fleet, at --events-latency-rate POSTs/s.
    """
    host, port = cluster.gateway.split(":")
    target = SaturationTarget(
        ServerAddress(host, int(port)), osquery_ssl_context(cluster.ca_cert),
        "/api/v1/osquery/log",
        numbered_log_body_factory(
            node_key, f"events-visibility-{port}", EVENTS_VISIBILITY_QUERY, EVENT_LINES_PER_FLUSH
        ),
        node_key=node_key, compressed=True,
    )  # fmt: skip
    async with cluster.aio_channel("ingest") as channel:
        result = await measure_visibility(
            target,
            rows_per_counter(logs_pb2_grpc.LogStoreStub(channel), EVENTS_VISIBILITY_QUERY),
            lines_per_post=EVENT_LINES_PER_FLUSH,
            rate_per_s=args.events_latency_rate,
            duration_s=args.latency_seconds,
            connections=4,
        )
    return result.as_dict()


# --- the figures --------------------------------------------------------------------------


def cost_model(costs: dict[str, dict[str, Any]], result: FleetResult) -> dict[str, Any]:
    """The whole run's cost, enrollments and first result sets included."""
    server_cpu_s = costs["total"]["cpu_s"]
    host_seconds = result.host_seconds
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


def window_model(
    window: dict[str, Any],
    costs: dict[str, dict[str, Any]],
    server: ServerSide,
    distributed_interval_s: float,
) -> dict[str, Any]:
    """The measured window: hosts per core, and each process's CPU per request and per row.

    `on_schedule` is distributed reads per host per distributed interval: 1.0 when hosts
    kept their intervals. A host waits for each answer before its next pause, as osquery
    does, so a slow server (or a starved load generator) gets fewer requests per host; a
    figure well below 1 means the run's hosts-per-core flatters the stack. A live query's
    `accelerate` (fleet) lifts it above 1 for a while.
    """
    window_s = window["window_s"]
    requests = window["all_requests"]["requests"]
    rows = sum(window["rows_accepted"].values())
    total_cpu_s = costs["total"]["cpu_s"]
    per_host_second = total_cpu_s / window["host_seconds"] if window["host_seconds"] else 0.0
    inserts = server.after.get("inserts", 0.0) - server.before.get("inserts", 0.0)
    inserted = server.after.get("rows_inserted", 0.0) - server.before.get("rows_inserted", 0.0)
    host_seconds = window["host_seconds"]
    reads = window["endpoints"]["distributed_read"]["requests"]
    return {
        **window,
        "on_schedule": reads * distributed_interval_s / host_seconds if host_seconds else None,
        "requests_per_s": requests / window_s if window_s else 0.0,
        "rows_per_s": rows / window_s if window_s else 0.0,
        "server_cpu_s": total_cpu_s,
        "server_cores": total_cpu_s / window_s if window_s else 0.0,
        "cpu_s_per_host_second": per_host_second,
        "hosts_per_core": hosts_per_core(per_host_second) if per_host_second else None,
        "processes": {
            name: {
                **figures,
                "cores": figures["cpu_s"] / window_s if window_s else 0.0,
                "share": figures["cpu_s"] / total_cpu_s if total_cpu_s else 0.0,
                "cpu_us_per_request": figures["cpu_s"] / requests * 1e6 if requests else None,
                "cpu_us_per_row": figures["cpu_s"] / rows * 1e6 if rows else None,
            }
            for name, figures in costs.items()
        },
        "clickhouse_inserts": {
            "inserts": int(inserts),
            "inserts_per_s": inserts / window_s if window_s else 0.0,
            "rows_inserted": int(inserted),
            "rows_per_insert": inserted / inserts if inserts else None,
        },
    }


def rows_check(cluster: QuarryCluster, result: FleetResult) -> dict[str, Any]:
    """Rows osquery was told are stored, against rows ClickHouse holds for this run.

    Acknowledged rows may still be on their way from the spool, so the count is repeated
    until it matches or stops growing for ROWS_CHECK_TIMEOUT_S.
    """
    accepted = result.rows_accepted
    found = stored_rows(cluster, result.config.identifier_prefix)
    deadline = time.monotonic() + ROWS_CHECK_TIMEOUT_S
    while found != accepted and time.monotonic() < deadline:
        time.sleep(ROWS_CHECK_POLL_S)
        now = stored_rows(cluster, result.config.identifier_prefix)
        if now != found:
            deadline = time.monotonic() + ROWS_CHECK_TIMEOUT_S
        found = now
    return {
        "accepted": accepted,
        "found": found,
        "equal": accepted == found,
        # Lines a host still held unacknowledged after its last tries: they may or may not
        # be stored, so a difference of up to these is no proof of a lost or doubled row.
        "lines_unacknowledged": result.lines_unacknowledged,
    }


def host_query_counts(cluster: QuarryCluster, identifier_prefix: str) -> dict[str, int]:
    """What the scheduled host queries stored for this run's hosts (docs/inventory.md):
    answers per group, failed ones, and their rows."""
    prefix = identifier_prefix.replace("'", "")
    mine = f"startsWith(host_identifier, '{prefix}-')"
    counts: dict[str, int] = {}
    for row in cluster.sql(
        "SELECT group_name, count() AS answers, countIf(status != 0) AS failed"
        f" FROM quarry.host_query_status WHERE {mine} GROUP BY group_name"
    ):
        counts[f"{row['group_name']}_answers"] = int(row["answers"])
        counts[f"{row['group_name']}_failed"] = int(row["failed"])
    for row in cluster.sql(
        "SELECT group_name, count() AS n FROM quarry.host_query_rows"
        f" WHERE {mine} GROUP BY group_name"
    ):
        counts[f"{row['group_name']}_rows"] = int(row["n"])
    return counts


def stored_rows(cluster: QuarryCluster, identifier_prefix: str) -> dict[str, int]:
    prefix = identifier_prefix.replace("'", "")
    found = {}
    for kind, table in (("results", "quarry.results"), ("status", "quarry.status_logs")):
        rows = cluster.sql(
            f"SELECT count() AS n FROM {table} WHERE startsWith(host_identifier, '{prefix}-')"
        )
        found[kind] = int(rows[0]["n"])
    return found
