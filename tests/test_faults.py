"""The fault matrix's rows that no other test covers (docs/faults.md lists them all).

A cluster started by `quarry up` (embedded chdb as the log store) and emulated osquery
nodes. A killed service is held down by stopping the `quarry up` supervisor (SIGSTOP)
before the SIGKILL, so the test sees the outage for as long as it needs rather than for
the supervisor's one-second restart delay; SIGCONT lets the supervisor restart it, as it
would after any crash. Each test checks what osquery sees during the outage, and that
after the restart nothing accepted is missing and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quarry.runtime.clickhouse_sql import sql_string
from quarry.serving.grpc_runtime import RECONNECT_BACKOFF_MAX_S
from tests.emulator import HostProfile, LogBuffer, OsqueryNode, QueryResult, log_records
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster

NOW = 1_736_072_430
RECOVERY_TIMEOUT_S = 60.0
# The service's gRPC port is the cluster's port base plus this (docs/architecture.md).
PORT_OFFSETS = {"enroll": 1, "config": 2, "distributed": 3, "ingest": 4}
_host_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("faults")) as running:
        yield running


def new_node(cluster: QuarryCluster, **options: object) -> OsqueryNode:
    """A fresh emulated host; osquery's retry sleeps are skipped (counted, not slept)."""
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
    defaults: dict[str, object] = {
        "server": cluster.gateway,
        "ca_file": cluster.ca_cert,
        "enroll_secret": cluster.enroll_secret,
        "profile": profile,
        "host_identifier": f"faults-{profile.hardware_uuid.lower()}",
        "retry_time_scale": 0,
    }
    return OsqueryNode(**{**defaults, **options})  # type: ignore[arg-type]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def service_down(cluster: QuarryCluster, service: str) -> Iterator[None]:
    """SIGKILL one service and keep it down until the block ends; then `quarry up`
    restarts it and this waits until it listens again."""
    assert cluster.process is not None
    supervisor = cluster.process.pid
    port = cluster.port_base + PORT_OFFSETS[service]
    os.kill(supervisor, signal.SIGSTOP)
    try:
        cluster.kill_service(service)
        assert eventually(lambda: not port_open(port), timeout_s=10), f"{service} still up"
        yield
    finally:
        os.kill(supervisor, signal.SIGCONT)
    assert eventually(lambda: port_open(port), timeout_s=RECOVERY_TIMEOUT_S), (
        f"{service} was not restarted:\n{cluster.log_text()[-3000:]}"
    )


async def until(attempt, timeout_s: float = RECOVERY_TIMEOUT_S):
    """Await `attempt()` until it returns something truthy (the gateway's channels and
    watch streams reconnect with backoff after a restart); its last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await attempt()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.3)


def copies_per_line(cluster: QuarryCluster, host: str) -> dict[int, int]:
    """How many times each line ("i" column) of this host is stored."""
    rows = cluster.sql(
        "SELECT column_values[1] AS i, count() AS n FROM quarry.results "
        f"WHERE host_identifier = {sql_string(host)} GROUP BY i"
    )
    return {int(row["i"]): int(row["n"]) for row in rows}


def add_lines(buffer: LogBuffer, host: str, numbers: range) -> None:
    for i in numbers:
        buffer.add_result(log_records.event_record("faults", host, NOW, {"i": str(i)}))


async def deliver(buffer: LogBuffer) -> bool:
    """Flush until the buffer is empty; True when it is."""

    async def flushed() -> bool:
        await buffer.check()
        return buffer.pending() == 0

    return await until(flushed)


def node_record(cluster: QuarryCluster, host: str) -> dict | None:
    nodes = cluster.cli_json("nodes", "list")
    return next((n for n in nodes if n["host_identifier"] == host), None)  # type: ignore[union-attr]


# --- enroll ----------------------------------------------------------------------------


def test_enrolled_nodes_carry_on_while_enroll_is_down_and_new_nodes_enroll_after(
    cluster: QuarryCluster,
) -> None:
    """The gateway authenticates from memory: an enrolled node fetches its config, reads
    live queries and sends logs as before. A new node gets an error (no key, no state) and
    enrolls once the service is back; no node is lost, and the check-ins the gateway held
    during the outage reach the service afterwards."""

    async def scenario() -> dict[str, object]:
        async with (
            new_node(cluster) as enrolled,
            new_node(cluster, enroll_max_attempts=1) as newcomer,
        ):
            assert await enrolled.get_node_key()
            buffer = LogBuffer(enrolled, period_s=0)
            add_lines(buffer, enrolled.host_identifier, range(3))
            await asyncio.sleep(1.1)  # so a check-in during the outage is newer than the enrollment
            with service_down(cluster, "enroll"):
                outage_started = int(time.time())
                during = {
                    "config": await enrolled.fetch_config() is not None,
                    "read": await enrolled.distributed_read() is not None,
                    "logs": await buffer.check(),
                    "new key": await newcomer.get_node_key(),
                    "new answer": newcomer.last_enroll_answer,
                }
            new_key = await until(newcomer.get_node_key)
            return {
                **during,
                "outage_started": outage_started,
                "new key after": new_key,
                "hosts": (enrolled.host_identifier, newcomer.host_identifier),
            }

    seen = asyncio.run(scenario())
    assert seen["config"] and seen["read"]
    assert seen["logs"] == {"result": True}
    assert seen["new key"] == ""
    assert "enrollment is unavailable" in str(seen["new answer"])
    assert seen["new key after"]
    enrolled_host, new_host = seen["hosts"]  # type: ignore[misc]
    assert node_record(cluster, new_host) is not None
    # The gateway kept the check-ins it could not record and sent them after the restart.
    outage_started = int(seen["outage_started"])  # type: ignore[call-overload]

    def seen_during_outage() -> bool:
        node = node_record(cluster, enrolled_host) or {}
        return int(node.get("last_seen_at", 0)) >= outage_started

    assert eventually(seen_during_outage, timeout_s=RECOVERY_TIMEOUT_S)
    assert copies_per_line(cluster, enrolled_host) == {0: 1, 1: 1, 2: 1}


# A restarted service is used again within gRPC's bounded reconnect back-off (at most
# quarry/serving/grpc_runtime.py's RECONNECT_BACKOFF_MAX_S between attempts) plus this margin.
FOUND_AGAIN_WITHIN_S = RECONNECT_BACKOFF_MAX_S + 2.0
# Long enough for gRPC's default back-off (1 s growing by 1.6x, attempts about 16 s and
# 26 s into an outage) to leave a gap of several seconds after the restart.
LONG_OUTAGE_S = 20.0


def test_a_restarted_enroll_service_is_used_again_at_once(cluster: QuarryCluster) -> None:
    """After an outage of several seconds, with enrollments failing all along (each one a
    reconnect attempt of the gateway's channel), the first enrollments after the service
    listens again succeed: the gateway does not wait out a grown reconnect back-off."""

    async def enroll_once() -> str:
        async with new_node(cluster, enroll_max_attempts=1) as node:
            key = await node.get_node_key()
            return key if key and await node.fetch_config() is not None else ""

    async def scenario() -> dict[str, object]:
        with service_down(cluster, "enroll"):
            outage_ends = time.monotonic() + LONG_OUTAGE_S
            failed = []
            while time.monotonic() < outage_ends:
                failed.append(await enroll_once())
                await asyncio.sleep(0.2)
        # service_down has waited until enroll listens again.
        return {
            "during": set(failed),
            "after": await until(enroll_once, timeout_s=FOUND_AGAIN_WITHIN_S),
            "again": await enroll_once(),
        }

    seen = asyncio.run(scenario())
    assert seen["during"] == {""}
    assert seen["after"], cluster.log_text()[-3000:]
    assert seen["again"]


# --- config ----------------------------------------------------------------------------


def set_config(cluster: QuarryCluster, path: Path, options: dict[str, int]) -> None:
    path.write_text(json.dumps({"options": options}))
    cluster.cli("config", "set", "-f", str(path))


def test_the_config_is_served_from_memory_while_config_is_down_and_changes_resume_after(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    """Nodes keep getting the config the gateway holds; a change is refused with an error
    while the service is down (nothing half-applied) and reaches nodes once it is back."""
    set_config(cluster, tmp_path / "before.json", {"distributed_interval": 17})
    failed_change = tmp_path / "during.json"
    failed_change.write_text(json.dumps({"options": {"distributed_interval": 18}}))

    async def interval(node: OsqueryNode) -> object:
        config = await node.fetch_config()
        return (config or {}).get("options", {}).get("distributed_interval")

    async def scenario() -> dict[str, object]:
        async with new_node(cluster) as node:
            assert await until(lambda: _is(interval(node), 17))
            with service_down(cluster, "config"):
                served = await interval(node)
                refused = cluster.cli("config", "set", "-f", str(failed_change), check=False)
            still_served = await interval(node)
            set_config(cluster, tmp_path / "after.json", {"distributed_interval": 19})
            changed = await until(lambda: _is(interval(node), 19))
            return {
                "served": served,
                "refused": refused,
                "still served": still_served,
                "changed": changed,
            }

    seen = asyncio.run(scenario())
    assert seen["served"] == 17
    refused = seen["refused"]
    assert refused.returncode != 0  # type: ignore[attr-defined]
    assert "Traceback" not in refused.stderr  # type: ignore[attr-defined]
    assert seen["still served"] == 17  # the refused change was not applied
    assert seen["changed"]


async def _is(value_coroutine, expected: object) -> bool:
    return await value_coroutine == expected


# --- distributed -----------------------------------------------------------------------


def test_a_live_query_answer_sent_while_distributed_is_down_is_retried_and_counted_once(
    cluster: QuarryCluster,
) -> None:
    """The gateway answers the write with an error when it cannot record the answer, so
    osquery keeps its results and writes again; the rows, already stored, are not stored
    again (same batch id), and the campaign's account shows one answer."""

    async def scenario() -> tuple[str, str, dict[str, object]]:
        async with new_node(cluster) as node:
            assert await node.get_node_key()
            report = live_query_report(
                await asyncio.to_thread(
                    cluster.cli,
                    "query",
                    "run",
                    "SELECT 42 AS answer;",
                    "--timeout",
                    "1",
                    "--json",
                    check=False,
                )
            )
            campaign_id = report["campaign"]["campaign_id"]
            work = await until(node.distributed_read)
            results = {campaign_id: QueryResult(rows=[{"answer": "42"}], status=0)}
            with service_down(cluster, "distributed"):
                during = {
                    "handed out": campaign_id in work.queries,
                    "read": await node.distributed_read() is not None,
                    "write": await node.distributed_write(results),
                    "error": node.last_error,
                }
            written = await until(lambda: node.distributed_write(results))
            return campaign_id, node.host_identifier, {**during, "written after": written}

    campaign_id, host, seen = asyncio.run(scenario())
    assert seen["handed out"] and seen["read"]
    assert seen["write"] is False
    assert "live query answers not recorded" in str(seen["error"])
    assert seen["written after"]
    account = cluster.cli_json("query", "show", campaign_id)
    [host_state] = [h for h in account["hosts"] if h["host_identifier"] == host]  # type: ignore[index]
    assert host_state["state"] == "ANSWERED"
    assert host_state["row_count"] == 1
    literal = sql_string(campaign_id)
    rows = cluster.sql(
        f"SELECT column_values FROM quarry.distributed_results WHERE campaign_id = {literal}"
    )
    assert [r["column_values"] for r in rows] == [["42"]]
    statuses = cluster.sql(
        f"SELECT count() AS n FROM quarry.distributed_status WHERE campaign_id = {literal}"
    )
    assert statuses == [{"n": 1}]


# --- the spool's disk ------------------------------------------------------------------


def newest_segment(cluster: QuarryCluster) -> Path:
    return max((cluster.state_dir / "spool").glob("*.seg"))


def test_a_spool_write_that_fails_like_a_full_disk_is_refused_and_retried(
    cluster: QuarryCluster,
) -> None:
    """A file size limit on the running ingest process makes its next spool append fail
    (EFBIG, the same failed-write path as ENOSPC). The batch is refused, osquery keeps it,
    ingest keeps serving, and once there is room the retry stores every line once."""

    async def scenario() -> tuple[str, dict[str, object]]:
        async with new_node(cluster) as node:
            host = node.host_identifier
            buffer = LogBuffer(node, period_s=0)
            add_lines(buffer, host, range(3))
            assert await deliver(buffer)
            ingest = cluster.service_pid("ingest")
            _, hard = resource.prlimit(ingest, resource.RLIMIT_FSIZE)
            limit = newest_segment(cluster).stat().st_size + 10
            resource.prlimit(ingest, resource.RLIMIT_FSIZE, (limit, hard))
            try:
                add_lines(buffer, host, range(3, 6))
                during = {"logs": await buffer.check(), "error": node.last_error}
                during["pending"] = buffer.pending("result")
            finally:
                resource.prlimit(ingest, resource.RLIMIT_FSIZE, (hard, hard))
            delivered = await deliver(buffer)
            during["same ingest"] = cluster.service_pid("ingest") == ingest
            return host, {**during, "delivered": delivered}

    host, seen = asyncio.run(scenario())
    assert seen["logs"] == {"result": False}
    assert seen["pending"] == 3
    assert "File too large" in str(seen["error"])
    assert seen["delivered"] and seen["same ingest"]
    copies = eventually(lambda: len(copies_per_line(cluster, host)) == 6, timeout_s=30)
    assert copies
    assert copies_per_line(cluster, host) == {i: 1 for i in range(6)}


# --- the ZeroMQ peer gone: the gateway, with batches in flight ------------------------


def test_log_batches_in_flight_when_the_gateway_dies_are_stored_once(
    cluster: QuarryCluster,
) -> None:
    """Several nodes post at once and the gateway is SIGKILLed among their POSTs: ingest's
    acks to the dead gateway go nowhere, osquery sees a broken connection or a refusal and
    re-sends the same lines, which ingest recognises by batch id."""
    hosts_count, lines = 4, 200

    async def scenario() -> list[str]:
        nodes = [new_node(cluster) for _ in range(hosts_count)]
        try:
            buffers = []
            for node in nodes:
                assert await node.get_node_key()
                buffer = LogBuffer(node, period_s=0, max_lines=20)
                add_lines(buffer, node.host_identifier, range(lines))
                buffers.append(buffer)
            deliveries = [asyncio.create_task(deliver(buffer)) for buffer in buffers]

            async def posting() -> bool:
                return any(buffer.pending() < lines for buffer in buffers)

            assert await until(posting)
            await asyncio.to_thread(cluster.kill_service, "gateway")
            assert all(await asyncio.gather(*deliveries))
            return [node.host_identifier for node in nodes]
        finally:
            for node in nodes:
                await node.aclose()

    hosts = asyncio.run(scenario())
    for host in hosts:
        assert eventually(lambda h=host: len(copies_per_line(cluster, h)) == lines, timeout_s=30)
        assert copies_per_line(cluster, host) == {i: 1 for i in range(lines)}
