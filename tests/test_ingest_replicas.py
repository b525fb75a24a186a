"""Two gateways and two ingest replicas on one ClickHouse server: every line stored once.

The topology of docs/adr/0005-ingest-replicas.md, on real processes: a cluster started by
`quarry up` (its gateway and its ingest are replicas 1) plus a second ingest process with
its own spool and a second gateway, both gateways listing both ingest replicas. Nodes
post through either gateway. A batch always goes to the same replica while that replica is
up, so a re-send through the other gateway is still recognised; with its replica killed, a
re-send fails over to the other replica, which finds it in ClickHouse and does not store it
again. Needs a ClickHouse server: two processes cannot share one embedded chdb.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest

from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.free_ports import free_port_base
from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.service_processes import ServiceProcess

NOW = 1_736_072_430
NODES = 6
BATCHES_PER_ROUND = 4
LINES_PER_BATCH = 3
METRICS_OFFSET = {"ingest": 13, "gateway": 14}
STORED = 'quarry_ingest_batches_total{outcome="stored"}'
# Round 3 goes on (up to this many rounds) until the restarted replica stored a batch.
MAX_ROUNDS = 40


@dataclass
class Topology:
    cluster: QuarryCluster
    second_ingest: ServiceProcess
    second_gateway: ServiceProcess

    @property
    def gateways(self) -> list[str]:
        return [self.cluster.gateway, f"localhost:{self.second_gateway.port_base}"]

    def metric(self, process: str, replica: int, sample: str) -> float:
        """Sum of one metric's samples whose line starts with `sample`, from /metrics."""
        base = self.cluster.port_base if replica == 1 else self.replica_base(process)
        url = f"http://127.0.0.1:{base + METRICS_OFFSET[process]}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample)
        )

    def replica_base(self, process: str) -> int:
        return (self.second_ingest if process == "ingest" else self.second_gateway).port_base


@pytest.fixture(scope="module")
def topology(clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    scratch = tmp_path_factory.mktemp("replicas")
    first_zmq, second_base = free_port_base() + 5, free_port_base()
    zmq_addrs = f"tcp://127.0.0.1:{first_zmq},tcp://127.0.0.1:{second_base + 5}"
    shared = {
        "QUARRY_CLICKHOUSE_URL": clickhouse_url,
        "QUARRY_INGEST_ZMQ_ADDRS": zmq_addrs,
        "QUARRY_LOG_ACK_TIMEOUT_S": "3",
        "QUARRY_INGEST_FLUSH_INTERVAL_S": "0.05",
    }
    second_ingest = ServiceProcess("ingest", scratch / "ingest-2", second_base, shared).start()
    cluster_env = {**shared, "QUARRY_INGEST_ZMQ_PORT": str(first_zmq)}
    (scratch / "cluster").mkdir()
    with quarry_cluster(scratch / "cluster", clickhouse_url, cluster_env) as cluster:
        second_gateway = ServiceProcess(
            "gateway", scratch / "gateway-2", free_port_base(), {**shared, **services_of(cluster)}
        ).start()
        try:
            yield Topology(cluster, second_ingest, second_gateway)
        finally:
            second_gateway.stop()
            second_ingest.stop()


def services_of(cluster: QuarryCluster) -> dict[str, str]:
    """Environment that points a second gateway at the cluster's services and certificate."""
    tls = cluster.state_dir / "tls"
    return {
        "QUARRY_ENROLL_ADDR": f"127.0.0.1:{cluster.port_base + 1}",
        "QUARRY_CONFIG_ADDR": f"127.0.0.1:{cluster.port_base + 2}",
        "QUARRY_DISTRIBUTED_ADDR": f"127.0.0.1:{cluster.port_base + 3}",
        "QUARRY_TLS_CERT": str(tls / "server.pem"),
        "QUARRY_TLS_KEY": str(tls / "server.key"),
        "QUARRY_TLS_CA": str(tls / "ca.pem"),
    }


_host_numbers = itertools.count(1)


def node_on(topology: Topology, gateway: str, node_key: str = "") -> OsqueryNode:
    profile = HostProfile.make(next(_host_numbers), seed=topology.cluster.port_base)
    node = OsqueryNode(
        server=gateway,
        ca_file=topology.cluster.ca_cert,
        enroll_secret=topology.cluster.enroll_secret,
        profile=profile,
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )
    node.node_key = node_key
    return node


def batch_lines(host: str, tag: str, batch: int) -> list[dict]:
    return [
        log_records.event_record("replicas", host, NOW, {"line": f"{tag}-{batch}-{i}"})
        for i in range(LINES_PER_BATCH)
    ]


async def deliver(node: OsqueryNode, lines: list[dict], timeout_s: float = 60) -> None:
    """POST until the gateway reports success, as osquery's forwarder retries a batch."""
    deadline = time.monotonic() + timeout_s
    while not await node.send_logs("result", lines):
        assert time.monotonic() < deadline, f"not delivered: {node.last_error}"
        await asyncio.sleep(0.5)


def copies_per_line(topology: Topology, hosts: list[str]) -> dict[str, int]:
    """How many times each "host line" is stored."""
    listed = ", ".join(f"'{host}'" for host in hosts)
    rows = topology.cluster.sql(
        "SELECT host_identifier, column_values[1] AS line, count() AS n FROM quarry.results "
        f"WHERE name = 'replicas' AND host_identifier IN ({listed}) "
        "GROUP BY host_identifier, line"
    )
    return {f"{row['host_identifier']} {row['line']}": int(row["n"]) for row in rows}


def wait_for_lines(topology: Topology, hosts: list[str], expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while True:
        copies = copies_per_line(topology, hosts)
        if len(copies) >= expected or time.monotonic() > deadline:
            return copies
        time.sleep(0.2)


def test_two_gateways_and_two_ingest_replicas_store_every_line_once(topology: Topology) -> None:
    async def scenario() -> tuple[list[str], int]:
        nodes = [node_on(topology, topology.gateways[i % 2]) for i in range(NODES)]
        # The same node key through the other gateway: osquery behind a load balancer.
        twins = [node_on(topology, topology.gateways[(i + 1) % 2]) for i in range(NODES)]
        sent: dict[str, list[list[dict]]] = {}
        try:
            for node, twin in zip(nodes, twins, strict=True):
                twin.node_key = await node.get_node_key()
                twin.host_identifier = node.host_identifier
                sent[node.host_identifier] = [
                    batch_lines(node.host_identifier, "a", b) for b in range(BATCHES_PER_ROUND)
                ]
            # Round 1: every batch through one gateway, then re-sent through the other.
            for node, twin in zip(nodes, twins, strict=True):
                for lines in sent[node.host_identifier]:
                    await deliver(node, lines)
                    await deliver(twin, lines)
            hosts = list(sent)
            stored = wait_for_lines(topology, hosts, NODES * BATCHES_PER_ROUND * LINES_PER_BATCH)
            assert set(stored.values()) == {1}

            # Round 2: replica 2 dies. Everything is re-sent (its batches fail over to
            # replica 1, which finds them in ClickHouse) and new batches keep flowing.
            topology.second_ingest.kill()
            topology.second_ingest.stop()
            for node in nodes:
                for lines in sent[node.host_identifier]:
                    await deliver(node, lines)
                await deliver(node, batch_lines(node.host_identifier, "b", 0))

            # Round 3: replica 2 is back with its spool; batches spread again. The gateways
            # reconnect to it on their own schedule, so keep sending until it took a share.
            topology.second_ingest.start()
            rounds = 0
            while rounds < BATCHES_PER_ROUND or (
                not topology.metric("ingest", 2, STORED) and rounds < MAX_ROUNDS
            ):
                for node, twin in zip(nodes, twins, strict=True):
                    await deliver(twin, batch_lines(node.host_identifier, "c", rounds))
                rounds += 1
            return hosts, rounds
        finally:
            for node in (*nodes, *twins):
                await node.aclose()

    hosts, last_rounds = asyncio.run(scenario())
    expected_lines = NODES * (BATCHES_PER_ROUND + 1 + last_rounds) * LINES_PER_BATCH
    copies = wait_for_lines(topology, hosts, expected_lines)
    assert len(copies) == expected_lines
    assert set(copies.values()) == {1}, {line: n for line, n in copies.items() if n != 1}

    # Both replicas took a share, and the failovers happened.
    assert topology.metric("ingest", 1, STORED) > 0
    assert topology.metric("ingest", 2, STORED) > 0
    failovers = sum(
        topology.metric("gateway", replica, "quarry_gateway_log_batch_failovers_total")
        for replica in (1, 2)
    )
    assert failovers > 0


def test_replica_order_is_the_same_for_every_gateway_and_spreads_batches() -> None:
    from gateway.log_forwarder import replica_order

    endpoints = ["tcp://ingest-0:50055", "tcp://ingest-1:50055", "tcp://ingest-2:50055"]
    ids = [orjson.dumps(i).hex() for i in range(3000)]
    first = [replica_order(batch_id, endpoints)[0] for batch_id in ids]
    # Any gateway, whatever order it lists the replicas in, picks the same one.
    assert first == [replica_order(batch_id, endpoints[::-1])[0] for batch_id in ids]
    shares = {endpoint: first.count(endpoint) for endpoint in endpoints}
    assert all(share > 800 for share in shares.values()), shares
    # Removing a replica moves only the batches that were its own.
    survivors = endpoints[:2]
    for batch_id, chosen in zip(ids, first, strict=True):
        if chosen in survivors:
            assert replica_order(batch_id, survivors)[0] == chosen
