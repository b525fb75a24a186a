"""Smoke test of the benchmark's load generator at tiny scale, against a real cluster.

Twenty simulated hosts enroll, fetch configs, flush their packs' logs and answer a live
query launched over gRPC mid-run; every row the server accepted must be in ClickHouse.
Plus unit tests of its parts: latency percentiles, the events workload's log lines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.event_payloads import EVENT_LINES_PER_FLUSH, STATUS_LINES_PER_BATCH, EventPayloads
from bench.fleet import ENDPOINTS, FleetConfig, FleetResult, run_fleet
from bench.latency import LatencyHistogram
from bench.payloads import config_for_packs, result_rows
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from tests.emulator import HostProfile
from tests.quarry_cluster import QuarryCluster, quarry_cluster

HOSTS = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry-bench")) as running:
        yield running


def fleet_config(cluster: QuarryCluster) -> FleetConfig:
    return FleetConfig(
        hosts=HOSTS,
        server=cluster.gateway,
        ca_file=str(cluster.ca_cert),
        enroll_secret=cluster.enroll_secret,
        duration_s=8.0,
        start_period_s=1.0,
        config_interval_s=2.0,
        log_interval_s=1.0,
        distributed_interval_s=1.0,
        # Every query of the packs runs within the first seconds, then every 1-72 s.
        query_interval_scale=0.02,
        gzip=True,
        seed=cluster.port_base,  # unique host identifiers per run
    )


def set_pack_config(cluster: QuarryCluster, config: FleetConfig, tmp_path: Path) -> None:
    path = tmp_path / "packs.json"
    document = config_for_packs(
        config_interval_s=config.config_interval_s,
        log_interval_s=config.log_interval_s,
        distributed_interval_s=config.distributed_interval_s,
        interval_scale=config.query_interval_scale,
    )
    path.write_text(json.dumps(document))
    cluster.cli("config", "set", "-f", str(path))


async def run_with_one_live_query(cluster: QuarryCluster, config: FleetConfig) -> FleetResult:
    channel = cluster.aio_channel("distributed")
    distributed = distributed_pb2_grpc.DistributedServiceStub(channel)

    async def start_campaign() -> str:
        request = distributed_pb2.StartQueryRequest(
            sql="SELECT hostname, cpu_brand FROM system_info", ttl_seconds=60, author="bench"
        )
        campaign = await distributed.StartQuery(request, timeout=10)
        return campaign.campaign_id

    try:
        return await run_fleet(config, live_queries=[(3.0, start_campaign)])
    finally:
        await channel.close()


def test_a_tiny_fleet_runs_clean_and_clickhouse_holds_every_accepted_row(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    config = fleet_config(cluster)
    set_pack_config(cluster, config, tmp_path)

    result = asyncio.run(run_with_one_live_query(cluster, config))

    assert result.hosts_enrolled == HOSTS
    for endpoint in ENDPOINTS:
        stats = result.endpoints[endpoint]
        assert stats["requests"] > 0, endpoint
        assert stats["errors"] == 0, (endpoint, stats)
        assert stats["p50_ms"] is not None
    assert result.endpoints["enroll"]["requests"] == HOSTS
    assert result.rows_accepted["results"] > HOSTS * 200  # every host's first processes run
    assert result.rows_accepted["status"] >= HOSTS * 3  # the start-up lines

    prefix = config.identifier_prefix
    stored = cluster.sql(
        f"SELECT count() AS n FROM quarry.results WHERE host_identifier LIKE '{prefix}-%'"
    )
    assert int(stored[0]["n"]) == result.rows_accepted["results"]
    stored_status = cluster.sql(
        f"SELECT count() AS n FROM quarry.status_logs WHERE host_identifier LIKE '{prefix}-%'"
    )
    assert int(stored_status[0]["n"]) == result.rows_accepted["status"]

    [live_query] = result.live_queries
    assert live_query.error == ""
    assert live_query.hosts_enrolled_at_launch == HOSTS
    assert live_query.hosts_answered == HOSTS
    assert live_query.seconds_to["p100"] is not None
    answered = cluster.sql(
        "SELECT count(DISTINCT host_identifier) AS n FROM quarry.distributed_results "
        f"WHERE campaign_id = '{live_query.campaign_id}'"
    )
    assert int(answered[0]["n"]) == HOSTS

    report = json.loads(json.dumps(result.to_dict()))  # plain JSON, as `python -m bench` writes
    assert report["endpoints"]["log"]["requests"] == result.endpoints["log"]["requests"]


def test_latency_percentiles_fall_in_the_right_buckets() -> None:
    histogram = LatencyHistogram()
    for millis in range(1, 1001):  # 1 ms .. 1 s, uniformly
        histogram.record(millis / 1000)
    other = LatencyHistogram()
    other.record(5.0)
    histogram.merge(other)

    assert histogram.count == 1001
    assert histogram.percentile_s(0.5) == pytest.approx(0.5, rel=0.05)
    assert histogram.percentile_s(0.95) == pytest.approx(0.95, rel=0.05)
    assert histogram.percentile_s(1.0) == 5.0
    assert LatencyHistogram().percentile_s(0.5) is None


def test_an_events_host_logs_twenty_event_lines_every_flush_and_status_every_sixth() -> None:
    profile = HostProfile.make(3, seed=7)
    host = EventPayloads(profile, "bench7-host", seed=7, started_at=1000.0, log_interval_s=10.0)
    flushes = [1000.0 + 10 * n for n in range(1, 31)]  # five minutes of flushes

    results = [host.due_records(now) for now in flushes]
    statuses = [host.status_records(now) for now in flushes]

    assert all(len(records) == EVENT_LINES_PER_FLUSH for records in results)
    assert all(record["action"] == "added" for records in results for record in records)
    assert sum(map(result_rows, results[0])) == EVENT_LINES_PER_FLUSH  # one row per line
    names = {record["name"] for records in results for record in records}
    assert names == {"pack_events_process_events", "pack_events_socket_events"}
    counters = [records[0]["counter"] for records in results]
    assert counters == list(range(len(flushes)))  # each flush is the query's next run
    batches = [lines for lines in statuses if lines]
    assert len(batches) == 5  # one batch per 60 s
    assert all(len(lines) == STATUS_LINES_PER_BATCH for lines in batches)
    assert all(line["hostIdentifier"] == "bench7-host" for line in batches[0])
