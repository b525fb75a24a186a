"""Ingest on a real ClickHouse cluster: ZooKeeper plus two 18.16 servers, one shard, two replicas.

The ingest service runs as a real process with QUARRY_CLICKHOUSE_URL listing both hosts and
QUARRY_CLICKHOUSE_CLUSTER set (docs/deploy.md, "ClickHouse cluster"); batches go in over
ZeroMQ as the gateway sends them. The tests check that every host has the schema, that rows
are visible through the Distributed tables from either host, that the first host stopped
mid-stream neither stops storage nor loses or doubles a row, that a batch re-sent to another
ingest process connected to the other host is found on the cluster and not stored again
(also when only the stopped host holds it: the replay waits for it), that the analysts'
cookbook runs on the cluster, and that retention drops partitions on every replica. A last
test runs two shards of one replica each.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import zmq
from clickhouse_driver import Client

from ingest_service.clickhouse_server_store import ClickHouseServerStore, client_url, url_hosts
from protos.v1 import logs_pb2
from tests.clickhouse_cluster import ClickHouseCluster, clickhouse_cluster
from tests.emulator import log_records
from tests.quarry_cluster import quarry_cluster
from tests.test_analyst_cookbook import (
    EXPECTATIONS,
    cookbook,
    lab_batch,
    lab_fleet,
    lab_host_queries,
    lab_hosts_statements,
)
from tests.test_hosts_table import current, enroll
from tests.test_ingest_pipeline import IngestProcess, query, run_ingest, send_batches

NOW = int(time.time())
EVENT = "cluster_events"
LINES_PER_BATCH = 3
SETTLE_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    with clickhouse_cluster(tmp_path_factory.mktemp("chcluster"), shards=1, replicas=2) as running:
        yield running


@pytest.fixture(scope="module")
def ingest(
    cluster: ClickHouseCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngestProcess]:
    with run_ingest(
        tmp_path_factory.mktemp("ingest"), cluster.url(), clickhouse_cluster=cluster.name
    ) as process:
        yield process


@pytest.fixture
def dealer(ingest: IngestProcess) -> Iterator[zmq.Socket]:
    sock = dealer_to(ingest)
    yield sock
    sock.close()


def dealer_to(ingest: IngestProcess) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ingest.zmq_endpoint)
    return sock


def batch(tag: str, number: int, failover: bool = False) -> logs_pb2.LogBatch:
    host = f"cl-{tag}"
    lines = [
        log_records.event_record(EVENT, host, NOW, {"line": f"{tag}-{number}-{i}"})
        for i in range(LINES_PER_BATCH)
    ]
    return logs_pb2.LogBatch(
        batch_id=f"{tag}-{number}",
        kind=logs_pb2.RESULT,
        node_id=f"node-{host}",
        host_identifier=host,
        received_at=NOW,
        data_json=orjson.dumps(lines),
        failover=failover,
    )


def store(dealer: zmq.Socket, batches: list[logs_pb2.LogBatch]) -> list[logs_pb2.LogAck]:
    acks = send_batches(dealer, batches)
    assert all(ack.ok for ack in acks), [ack.error for ack in acks]
    return acks


def copies_per_line(cluster: ClickHouseCluster, host: int, table: str, tag: str) -> dict[str, int]:
    """How many times each line of `tag` is in `table`, read on one host."""
    rows = cluster.hosts[host].rows(
        f"SELECT column_values[1], count() FROM quarry.{table} "
        f"WHERE name = '{EVENT}' AND host_identifier = 'cl-{tag}' GROUP BY column_values[1]"
    )
    return {line: count for line, count in rows}


def expected_lines(tag: str, batches: int) -> dict[str, int]:
    return {f"{tag}-{n}-{i}": 1 for n in range(batches) for i in range(LINES_PER_BATCH)}


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# Tests


def test_a_url_with_several_hosts_becomes_one_host_and_alt_hosts() -> None:
    url = "clickhouse://quarry:pw@ch-1:9000,ch-2:9001/quarry?compression=lz4"
    assert url_hosts(url) == ["ch-1:9000", "ch-2:9001"]
    client = Client.from_url(client_url(url, "default"))
    assert list(client.connection.hosts) == [("ch-1", 9000), ("ch-2", 9001)]
    assert client.connection.user == "quarry" and client.connection.database == "default"
    only = Client.from_url(client_url(url, "quarry", only_host="ch-2:9001"))
    assert list(only.connection.hosts) == [("ch-2", 9001)]
    single = Client.from_url(client_url("clickhouse://default:@ch-1:9000/x", "quarry"))
    assert list(single.connection.hosts) == [("ch-1", 9000)]


def test_every_host_has_local_replicated_tables_and_distributed_ones(
    cluster: ClickHouseCluster, ingest: IngestProcess
) -> None:
    for host in cluster.hosts:
        engines = dict(
            host.rows("SELECT name, engine FROM system.tables WHERE database = 'quarry'")
        )
        for table in ("results", "status_logs", "distributed_results", "distributed_status",
                      "host_query_rows", "host_query_status"):  # fmt: skip
            assert engines[f"{table}_local"] == "ReplicatedMergeTree", (host.address, engines)
            assert engines[table] == "Distributed", (host.address, engines)
        assert engines["hosts_local"] == "ReplicatedReplacingMergeTree", engines
        assert engines["hosts"] == "Distributed", engines
        # The software inventory: replicated aggregates fed from the local answers.
        assert engines["software_seen_local"] == "ReplicatedAggregatingMergeTree"
        assert engines["software_seen"] == "Distributed"
        assert engines["software_seen_feed"] == "MaterializedView"
        views = ("host_last_seen", "query_rows_per_day", "latest_snapshot", "hosts_current",
                 "host_vitals_latest", "host_vitals", "host_query_freshness",
                 "software")  # fmt: skip
        for view in views:
            assert engines[view] == "View"
        macros = dict(host.rows("SELECT macro, substitution FROM system.macros"))
        zookeeper_path = host.rows(
            "SELECT zookeeper_path FROM system.replicas WHERE table = 'results_local'"
        )
        assert zookeeper_path == [(f"/clickhouse/tables/{macros['shard']}/quarry/results",)]


def test_rows_are_visible_through_the_distributed_table_from_either_host(
    cluster: ClickHouseCluster, dealer: zmq.Socket, ingest: IngestProcess
) -> None:
    store(dealer, [batch("both", n) for n in range(4)])
    for host in range(len(cluster.hosts)):
        wait_for(
            lambda host=host: (
                copies_per_line(cluster, host, "results", "both") == expected_lines("both", 4)
            ),
            f"rows through host {host}",
        )
    answer = query(ingest, "SELECT count() FROM quarry.results WHERE host_identifier = 'cl-both'")
    assert answer.error == "" and [orjson.loads(row) for row in answer.rows_json] == [[12]]


def test_a_resent_batch_is_stored_once(cluster: ClickHouseCluster, dealer: zmq.Socket) -> None:
    first = store(dealer, [batch("resent", 0)])
    again = store(dealer, [batch("resent", 0)])
    assert not first[0].duplicate and again[0].duplicate
    store(dealer, [batch("resent", 1)])  # later than the re-send: its rows prove it is done
    wait_for(
        lambda: copies_per_line(cluster, 1, "results", "resent") == expected_lines("resent", 2),
        "the re-sent batch once",
    )


def test_a_failover_batch_found_on_the_other_host_is_not_stored_again(
    cluster: ClickHouseCluster, dealer: zmq.Socket, tmp_path: Path
) -> None:
    """ADR 0005: a batch that failed over to another ingest replica is checked first. That
    replica writes to the other host (its URL lists it first), and still finds the batch."""
    store(dealer, [batch("elsewhere", 0)])
    wait_for(lambda: copies_per_line(cluster, 0, "results", "elsewhere"), "the first copy")
    reversed_url = cluster.url().replace(
        f"{cluster.hosts[0].address},{cluster.hosts[1].address}",
        f"{cluster.hosts[1].address},{cluster.hosts[0].address}",
    )
    with run_ingest(tmp_path / "replica-2", reversed_url, clickhouse_cluster=cluster.name) as other:
        other_dealer = dealer_to(other)
        try:
            store(other_dealer, [batch("elsewhere", 0, failover=True), batch("elsewhere", 1)])
        finally:
            other_dealer.close()
        wait_for(
            lambda: (
                copies_per_line(cluster, 1, "results", "elsewhere")
                == expected_lines("elsewhere", 2)
            ),
            "both batches",
        )
        log = other.service.log_text()
    assert "1 batches already in results, not inserted again" in log, log
    assert copies_per_line(cluster, 0, "results_local", "elsewhere") == expected_lines(
        "elsewhere", 2
    )


def test_a_host_stopped_mid_stream_loses_and_doubles_nothing(
    cluster: ClickHouseCluster, dealer: zmq.Socket, ingest: IngestProcess
) -> None:
    first = cluster.hosts[0]  # ingest writes to the first host while it answers
    store(dealer, [batch("outage", n) for n in range(0, 5)])
    first.stop()
    try:
        # While the first host is down, ingest stores through the second.
        store(dealer, [batch("outage", n) for n in range(5, 10)])
        wait_for(
            lambda: (
                copies_per_line(cluster, 1, "results", "outage") == expected_lines("outage", 10)
            ),
            "storage through the second host",
        )
    finally:
        first.start()
    store(dealer, [batch("outage", n) for n in range(10, 15)])
    expected = expected_lines("outage", 15)
    for host, table in [(0, "results_local"), (1, "results_local"), (0, "results")]:
        wait_for(
            lambda host=host, table=table: (
                copies_per_line(cluster, host, table, "outage") == expected
            ),
            f"every line once in {table} of host {host}",
        )
    # Whether an insert was in flight when the host stopped is up to timing: the driver pings
    # before each insert, so usually the next insert just connects to the second host.
    assert "inserting it again" not in ingest.service.log_text()


def test_a_batch_only_the_stopped_host_holds_is_waited_for_not_stored_twice(
    cluster: ClickHouseCluster, tmp_path: Path
) -> None:
    """The hard case of ADR 0010: a batch committed on the first host that the second host has
    not fetched when the first stops. A replay through the second host must not store it
    again; it waits until the first host is back, then finds it."""
    first, second = cluster.hosts

    def lines_on(host: int) -> dict[str, int]:
        return copies_per_line(cluster, host, "results_local", "unfetched")

    second.rows("SYSTEM STOP FETCHES quarry.results_local")
    try:
        only_first = f"clickhouse://default:@{first.address}/quarry"
        with run_ingest(tmp_path / "first", only_first, clickhouse_cluster=cluster.name) as writer:
            writer_dealer = dealer_to(writer)
            try:
                store(writer_dealer, [batch("unfetched", 0)])
            finally:
                writer_dealer.close()
            wait_for(lambda: lines_on(0), "the batch on the first host")
        first.stop()
        try:
            with run_ingest(
                tmp_path / "replay", cluster.url(), clickhouse_cluster=cluster.name
            ) as other:
                other_dealer = dealer_to(other)
                try:
                    store(
                        other_dealer,
                        [batch("unfetched", 0, failover=True), batch("unfetched", 1)],
                    )
                finally:
                    other_dealer.close()
                wait_for(
                    lambda: "no replica of shard 1" in other.service.log_text(),
                    "the replay to find no caught-up replica",
                )
                assert not lines_on(1)
                first.start()
                second.rows("SYSTEM START FETCHES quarry.results_local")
                for host in range(2):
                    wait_for(
                        lambda host=host: lines_on(host) == expected_lines("unfetched", 2),
                        f"each line once on host {host}",
                    )
                assert "1 batches already in results" in other.service.log_text()
        finally:
            first.start()
    finally:
        second.rows("SYSTEM START FETCHES quarry.results_local")


@pytest.mark.parametrize("title", sorted(EXPECTATIONS))
def test_cookbook_query_on_the_cluster(lab: IngestProcess, title: str) -> None:
    answer = query(lab, cookbook()[title])
    assert answer.error == "", answer.error
    rows = [orjson.loads(row) for row in answer.rows_json]
    assert EXPECTATIONS[title](rows), rows


@pytest.fixture(scope="module")
def lab(ingest: IngestProcess, cluster: ClickHouseCluster) -> IngestProcess:
    return lab_on_cluster(ingest, cluster)


def lab_on_cluster(ingest: IngestProcess, cluster: ClickHouseCluster) -> IngestProcess:
    """The cookbook's lab fleet (tests/test_analyst_cookbook.py), stored on the cluster; its
    hosts rows go into the first host's local table (its shard), as ingest writes them."""
    lab_dealer = dealer_to(ingest)
    try:
        store(lab_dealer, [lab_batch(*entry) for entry in lab_fleet()] + lab_host_queries())
    finally:
        lab_dealer.close()
    for statement in lab_hosts_statements("hosts_local"):
        cluster.hosts[0].rows(statement)
    return ingest


def test_retention_drops_old_partitions_on_every_replica(
    cluster: ClickHouseCluster, dealer: zmq.Socket
) -> None:
    old = batch("old", 0)
    old.received_at = NOW - 40 * 86400
    old.batch_id = f"old-{uuid.uuid4().hex}"
    store(dealer, [old])
    for host in range(2):
        wait_for(
            lambda host=host: copies_per_line(cluster, host, "results_local", "old"),
            "the old rows",
        )
    cluster_store = ClickHouseServerStore(cluster.url(), cluster.name)
    try:
        dropped = cluster_store.drop_expired_partitions({"results": 30})
    finally:
        cluster_store.close()
    assert [table for table, _ in dropped] == ["results"]
    for host in range(2):
        wait_for(
            lambda host=host: not copies_per_line(cluster, host, "results_local", "old"),
            f"the partition dropped on host {host}",
        )
    assert copies_per_line(cluster, 0, "results", "both")  # today's rows stay


def test_two_shards_a_batch_stored_on_one_shard_is_found_through_the_other(
    tmp_path: Path,
) -> None:
    """Two shards of one replica each: two ingest processes write to different shards, the
    Distributed table reads both, and the check before a failover batch sums the shards."""
    with clickhouse_cluster(tmp_path / "sharded", shards=2, replicas=1) as sharded:
        first, second = (host.address for host in sharded.hosts)
        second_first = sharded.url().replace(f"{first},{second}", f"{second},{first}")
        with (
            run_ingest(tmp_path / "a", sharded.url(), clickhouse_cluster=sharded.name) as on_a,
            run_ingest(tmp_path / "b", second_first, clickhouse_cluster=sharded.name) as on_b,
        ):
            dealer_a, dealer_b = dealer_to(on_a), dealer_to(on_b)
            try:
                store(dealer_a, [batch("shards", 0), batch("shards", 1)])
                wait_for(lambda: copies_per_line(sharded, 0, "results_local", "shards"), "A")
                store(dealer_b, [batch("shards", 1, failover=True), batch("shards", 2)])
            finally:
                dealer_a.close()
                dealer_b.close()
            for host in range(2):
                wait_for(
                    lambda host=host: (
                        copies_per_line(sharded, host, "results", "shards")
                        == expected_lines("shards", 3)
                    ),
                    f"every line once through host {host}",
                )
            on_shard_2 = copies_per_line(sharded, 1, "results_local", "shards")
            assert on_shard_2 == {f"shards-2-{i}": 1 for i in range(LINES_PER_BATCH)}
            assert "1 batches already in results" in on_b.service.log_text()
            # The cookbook's subqueries span both shards (quarry sql reads them GLOBAL).
            lab_on_cluster(on_a, sharded)
            query(on_a, "SELECT 1")  # returns once on_a has stored what it acked
            failed = {}
            for title, expectation in EXPECTATIONS.items():
                answer = query(on_b, cookbook()[title])
                rows = [orjson.loads(row) for row in answer.rows_json]
                if answer.error or not expectation(rows):
                    failed[title] = answer.error or rows
            assert not failed, failed


def hosts_rows_inserted(metrics_url: str) -> float:
    """quarry_ingest_rows_inserted_total{table="hosts"} of one ingest process."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = re.search(r'^quarry_ingest_rows_inserted_total\{table="hosts"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_hosts_written_by_two_ingest_replicas_show_each_node_once(
    cluster: ClickHouseCluster, tmp_path: Path
) -> None:
    """`quarry up` on the cluster, and a second ingest process on the same feeds connected
    to the other host: both write quarry.hosts, and analysts see each node once."""
    first, second = (host.address for host in cluster.hosts)
    second_first = cluster.url().replace(f"{first},{second}", f"{second},{first}")
    env = {"QUARRY_CLICKHOUSE_CLUSTER": cluster.name}
    with quarry_cluster(tmp_path, cluster.url(), env) as quarry:
        feeds = {name: quarry.settings.service_addr(name) for name in ("enroll", "config")}
        with run_ingest(
            tmp_path / "other-ingest",
            second_first,
            clickhouse_cluster=cluster.name,
            enroll_addr=feeds["enroll"],
            config_addr=feeds["config"],
        ) as other:
            node = enroll(quarry)
            wait_for(lambda: "hosts: quarry.hosts holds" in other.service.log_text(), "a read")
            quarry.cli("node", "revoke", node.host_identifier)
            # Both write the revocation: each compares with what it wrote itself (merges
            # may fold the rows into one at once, hence the counters).
            first_metrics = f"http://127.0.0.1:{quarry.settings.metrics_port('ingest')}/metrics"
            for metrics_url in (first_metrics, other.metrics_url):
                wait_for(lambda url=metrics_url: hosts_rows_inserted(url) >= 1, "a row each")

            def revoked_once() -> bool:
                rows = current(quarry, node)
                return rows.get(node.host_identifier, {}).get("status") == "revoked"

            wait_for(revoked_once, "the revocation")
            for host in cluster.hosts:
                assert host.rows(
                    "SELECT count(), any(status) FROM quarry.hosts_current "
                    f"WHERE host_identifier = '{node.host_identifier}'"
                ) == [(1, "revoked")]
                assert host.rows(
                    "SELECT count() FROM quarry.hosts FINAL "
                    f"WHERE host_identifier = '{node.host_identifier}'"
                ) == [(1,)]
