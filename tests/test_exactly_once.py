"""Exactly once when answers are lost: osquery's real re-send, counted line by line.

osquery deletes log lines only when a POST carrying them is answered with success, and
sends the lines of a failed POST again merged with those buffered since (a new body, a new
batch id: osquery-protocol.md §7.3). Each test here makes answers go missing in one of the
ways the fault matrix found (docs/faults.md): a network that loses answers, an ingest that
stalls past the gateway's wait, kills at random points of the ack path. Emulated nodes
(`LogBuffer`: osquery's buffer and backoff) keep logging meanwhile; at the end every line,
each carrying a unique marker, is counted in ClickHouse: every line stored exactly once, on
both stores (docs/adr/0012-line-level-exactly-once.md).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from quarry.runtime.clickhouse_sql import sql_string
from tests.emulator import HostProfile, LogBuffer, OsqueryNode, log_records
from tests.lossy_proxy import LossyProxy
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

NOW = 1_736_072_430
# Short, so a stalled ingest outlasts the gateway's wait within seconds.
ACK_TIMEOUT_S = 1.5
HOSTS = 6
ROUNDS = 12
RESULTS_PER_ROUND = 15
_host_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    extra_env = {"QUARRY_LOG_ACK_TIMEOUT_S": str(ACK_TIMEOUT_S)}
    with quarry_cluster(tmp_path_factory.mktemp("exactly-once"), log_store_url, extra_env) as c:
        yield c


class Fleet:
    """Emulated nodes, each logging results and status lines with unique markers."""

    def __init__(self, cluster: QuarryCluster, server: str) -> None:
        self.nodes = []
        for _ in range(HOSTS):
            profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
            self.nodes.append(
                OsqueryNode(
                    server=server,
                    ca_file=cluster.ca_cert,
                    enroll_secret=cluster.enroll_secret,
                    profile=profile,
                    host_identifier=f"once-{profile.hardware_uuid.lower()}",
                    retry_time_scale=0,
                    timeout_s=ACK_TIMEOUT_S * 4,
                )
            )
        self.buffers = [LogBuffer(node, period_s=0, max_lines=40) for node in self.nodes]
        self.results = 0
        self.rounds = 0

    @property
    def hosts(self) -> list[str]:
        return [node.host_identifier for node in self.nodes]

    def log_one_round(self) -> None:
        """Every node logs new result lines and two status lines, one of them a twin: the
        same status line twice in one flush (a genuinely repeated message) is two lines."""
        for node, buffer in zip(self.nodes, self.buffers, strict=True):
            host = node.host_identifier
            for i in range(self.results, self.results + RESULTS_PER_ROUND):
                buffer.add_result(log_records.event_record("once", host, NOW, {"i": str(i)}))
            buffer.add_status(log_records.status_record(host, NOW, f"unique {self.rounds}"))
            twin = log_records.status_record(host, NOW, f"twin {self.rounds}")
            buffer.add_status(twin)
            buffer.add_status(twin)
        self.results += RESULTS_PER_ROUND
        self.rounds += 1

    async def flush(self) -> None:
        await asyncio.gather(*(buffer.check() for buffer in self.buffers))

    async def run(self, rounds: int, pause_s: float = 0.05) -> None:
        for _ in range(rounds):
            self.log_one_round()
            await self.flush()
            await asyncio.sleep(pause_s)

    async def drain(self, timeout_s: float = 90.0) -> None:
        """Flush until every buffer is empty (osquery's retries, without their sleeps)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(buffer.pending() for buffer in self.buffers):
            assert asyncio.get_running_loop().time() < deadline, "buffers never drained"
            await self.flush()
            await asyncio.sleep(0.05)

    async def enroll(self) -> None:
        for node in self.nodes:
            assert await node.get_node_key(), node.last_error

    async def close(self) -> None:
        for node in self.nodes:
            await node.aclose()


def stored_once(cluster: QuarryCluster, fleet: Fleet) -> None:
    """Every line of every host is in ClickHouse exactly once (twins: exactly twice)."""
    hosts = ", ".join(sql_string(host) for host in fleet.hosts)
    expected_rows = len(fleet.hosts) * fleet.results
    query = f"SELECT count() AS n FROM quarry.results WHERE host_identifier IN ({hosts})"
    assert eventually(lambda: int(cluster.sql(query)[0]["n"]) >= expected_rows, timeout_s=60)
    results = cluster.sql(
        "SELECT host_identifier AS host, column_values[1] AS i, count() AS n "
        f"FROM quarry.results WHERE host_identifier IN ({hosts}) GROUP BY host, i"
    )
    copies = {(row["host"], int(row["i"])): int(row["n"]) for row in results}
    assert copies == {(host, i): 1 for host in fleet.hosts for i in range(fleet.results)}
    statuses = cluster.sql(
        "SELECT host_identifier AS host, message, count() AS n "
        f"FROM quarry.status_logs WHERE host_identifier IN ({hosts}) GROUP BY host, message"
    )
    expected = {
        (host, f"{kind} {r}"): (2 if kind == "twin" else 1)
        for host in fleet.hosts
        for r in range(fleet.rounds)
        for kind in ("unique", "twin")
    }
    assert {(row["host"], row["message"]): int(row["n"]) for row in statuses} == expected


def ingest_counter(cluster: QuarryCluster, name: str) -> float:
    port = cluster.settings.metrics_port("ingest")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def running(cluster: QuarryCluster, service: str) -> bool:
    try:
        cluster.service_pid(service)
    except LookupError:
        return False
    return True


async def lose_answers(
    cluster: QuarryCluster, seed: int, rounds: int, crash: Callable[[], None] | None = None
) -> tuple[Fleet, int]:
    """Nodes behind a relay that loses a third of the gateway's answers for `rounds` rounds;
    with `crash`, every answer of one round more is lost and `crash` runs; then nothing is
    lost, the nodes log two rounds more (none without a crash) and send what they hold.
    The fleet, and how many answers were lost."""
    proxy = LossyProxy(cluster.port_base, loss=0, seed=seed)
    fleet = Fleet(cluster, f"localhost:{await proxy.start()}")
    try:
        await fleet.enroll()
        proxy.loss = 0.35
        await fleet.run(rounds)
        if crash is not None:
            proxy.loss = 1.0
            await fleet.run(1)
            await asyncio.to_thread(crash)
            proxy.loss = 0
            await fleet.run(2)
        proxy.loss = 0
        await fleet.drain()
        return fleet, proxy.lost_answers
    finally:
        await fleet.close()
        await proxy.close()


def test_lines_re_sent_after_lost_answers_merged_with_newer_lines_are_stored_once(
    cluster: QuarryCluster,
) -> None:
    """A network that loses a third of the gateway's answers: every lost answer to a stored
    log POST makes osquery send those lines again inside a larger, different batch."""
    repeated_before = ingest_counter(cluster, "quarry_ingest_repeated_lines_total")
    fleet, lost = asyncio.run(lose_answers(cluster, cluster.port_base, ROUNDS))
    assert lost > 0
    stored_once(cluster, fleet)
    # The proof that merged re-sends happened and were recognised line by line.
    assert ingest_counter(cluster, "quarry_ingest_repeated_lines_total") > repeated_before


def test_lines_whose_answers_were_lost_before_an_ingest_kill_are_known_after_the_restart(
    cluster: QuarryCluster,
) -> None:
    """Every answer of the last round is lost, then ingest is SIGKILLed: the restarted
    process knows those lines from its snapshot and its spool, and recognises them when
    osquery sends them again with newer ones."""

    def kill_ingest() -> None:
        cluster.kill_service("ingest")

    fleet, _ = asyncio.run(lose_answers(cluster, cluster.port_base + 1, 4, kill_ingest))
    stored_once(cluster, fleet)


def kill_everything(cluster: QuarryCluster) -> None:
    """SIGKILL every service and the supervisor at once, as a machine's crash would."""
    assert cluster.process is not None
    pids = [cluster.service_pid(service) for service in ("gateway", "ingest", "enroll")]
    for pid in [cluster.process.pid, *pids]:
        os.kill(pid, signal.SIGKILL)
    cluster.process.wait()
    assert eventually(lambda: not any(alive(pid) for pid in pids), timeout_s=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lines_whose_answers_were_lost_before_every_process_was_killed_are_stored_once(
    cluster: QuarryCluster,
) -> None:
    """Answers lost, then every process SIGKILLed and `quarry up` started again: the lines
    osquery still holds are recognised when it sends them to the new processes."""

    def crash_and_start_again() -> None:
        kill_everything(cluster)
        cluster.start()

    fleet, _ = asyncio.run(lose_answers(cluster, cluster.port_base + 2, 3, crash_and_start_again))
    stored_once(cluster, fleet)


@pytest.mark.parametrize("stall_s", [ACK_TIMEOUT_S + 0.5, ACK_TIMEOUT_S * 3])
def test_a_stalled_ingest_past_the_gateways_wait_stores_every_line_once(
    cluster: QuarryCluster, stall_s: float
) -> None:
    """Ingest stopped (SIGSTOP) for longer than the gateway waits: the POSTs in flight are
    answered with an error while their batches wait in ingest's socket, and osquery sends
    those lines again merged with newer ones. Resumed, ingest stores the batches that come
    late (a short stall: their re-sent lines are then recognised) and drops those whose
    gateway gave up long ago (a long stall: their lines are stored from the re-send)."""

    async def scenario() -> Fleet:
        fleet = Fleet(cluster, cluster.gateway)
        try:
            await fleet.enroll()
            await fleet.run(3)
            ingest = cluster.service_pid("ingest")
            os.kill(ingest, signal.SIGSTOP)
            try:
                stalled = asyncio.create_task(fleet.run(1))
                await asyncio.sleep(stall_s)
            finally:
                os.kill(ingest, signal.SIGCONT)
            await stalled
            await fleet.run(3)
            await fleet.drain()
            return fleet
        finally:
            await fleet.close()

    stored_once(cluster, asyncio.run(scenario()))


def test_kills_at_random_points_of_the_ack_path_store_every_line_once(
    cluster: QuarryCluster,
) -> None:
    """ingest and the gateway SIGKILLed at random moments while nodes post (`quarry up`
    restarts them): acks are lost between the fsync and osquery, in both processes."""
    seed = random.randrange(1 << 30)
    chooser = random.Random(seed)
    print(f"kill schedule seed {seed}")

    async def killer() -> None:
        for _ in range(3):
            await asyncio.sleep(chooser.uniform(0.2, 1.5))
            service = chooser.choice(["ingest", "gateway"])
            # A service killed a moment ago may not be restarted yet: kill the new one.
            assert await asyncio.to_thread(eventually, lambda s=service: running(cluster, s))
            await asyncio.to_thread(cluster.kill_service, service)

    async def scenario() -> Fleet:
        fleet = Fleet(cluster, cluster.gateway)
        try:
            await fleet.enroll()
            kills = asyncio.create_task(killer())
            await fleet.run(ROUNDS, pause_s=0.2)
            await kills
            await fleet.drain(timeout_s=120)
            return fleet
        finally:
            await fleet.close()

    stored_once(cluster, asyncio.run(scenario()))
