"""Live queries end to end: `quarry query run` against emulated nodes on a real cluster.

The gateway runs two workers here, as in production, so a node's requests land on
either one and both must hold the same nodes and campaigns.

The cluster is this module's own, so "every node" means exactly the nodes started
here. Each node runs osquery's distributed loop (read, run, write) while the command
waits for their answers; rows must land in quarry.distributed_results on both stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.emulator import HostProfile, OsqueryNode
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster

FLEET_SIZE = 3


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    # Two gateway workers: each must learn of nodes and campaigns the other saw.
    workers = {"QUARRY_GATEWAY_WORKERS": "2"}
    with quarry_cluster(tmp_path_factory.mktemp("quarry-live"), log_store_url, workers) as running:
        yield running


def fleet(cluster: QuarryCluster) -> list[OsqueryNode]:
    profiles = [HostProfile.make(i, seed=cluster.port_base) for i in range(FLEET_SIZE)]
    return [
        OsqueryNode(
            server=cluster.gateway,
            ca_file=cluster.ca_cert,
            enroll_secret=cluster.enroll_secret,
            profile=profile,
            # Like --host_identifier=uuid: unique across runs sharing one ClickHouse server.
            host_identifier=profile.hardware_uuid.lower(),
            retry_time_scale=0,
        )
        for profile in profiles
    ]


async def run_query_while_nodes_check_in(
    cluster: QuarryCluster, nodes: list[OsqueryNode], *cli_args: str
) -> tuple[dict, dict[str, list]]:
    """Run `quarry query run ...` while every node loops over its distributed read/write."""
    for node in nodes:
        assert await node.get_node_key()
    stop = asyncio.Event()
    rounds: dict[str, list] = {node.host_identifier: [] for node in nodes}

    async def distributed_loop(node: OsqueryNode) -> None:
        while not stop.is_set():
            rounds[node.host_identifier].append(await node.run_distributed_once())
            await asyncio.sleep(0.1)

    loops = [asyncio.create_task(distributed_loop(node)) for node in nodes]
    try:
        result = await asyncio.to_thread(
            cluster.cli, "query", "run", *cli_args, "--json", check=False
        )
    finally:
        stop.set()
        await asyncio.gather(*loops)
    return live_query_report(result), rounds


def test_a_live_query_reaches_every_node_and_its_rows_reach_clickhouse(
    cluster: QuarryCluster,
) -> None:
    async def scenario() -> tuple[dict, dict[str, list], list[OsqueryNode]]:
        nodes = fleet(cluster)
        try:
            report, rounds = await run_query_while_nodes_check_in(
                cluster, nodes, "SELECT hostname, cpu_brand FROM system_info", "--timeout", "60"
            )
        finally:
            for node in nodes:
                await node.aclose()
        return report, rounds, nodes

    report, rounds, nodes = asyncio.run(scenario())
    campaign_id = report["campaign"]["campaign_id"]
    hosts = {h["host_identifier"]: h for h in report["hosts"]}
    assert sorted(hosts) == sorted(n.host_identifier for n in nodes)
    for host in hosts.values():
        assert host["state"] == "ANSWERED"
        assert host.get("status", 0) == 0
        assert host["row_count"] == 1  # numbers, not protobuf JSON's int64 strings

    handed_out = [
        r
        for per_node in rounds.values()
        for r in per_node
        if r.work and campaign_id in r.work.queries
    ]
    assert handed_out and all(r.work.accelerate == 60 for r in handed_out)

    rows = cluster.sql(
        "SELECT host_identifier, column_names, column_values FROM quarry.distributed_results "
        f"WHERE campaign_id = '{campaign_id}' ORDER BY host_identifier"
    )
    assert [r["host_identifier"] for r in rows] == sorted(hosts)
    by_host = {
        r["host_identifier"]: dict(zip(r["column_names"], r["column_values"], strict=True))
        for r in rows
    }
    for node in nodes:
        assert by_host[node.host_identifier]["hostname"] == node.profile.hostname
    assert statuses_in_clickhouse(cluster, campaign_id) == {host: (0, "", 1) for host in hosts}


def statuses_in_clickhouse(cluster: QuarryCluster, campaign_id: str) -> dict[str, tuple]:
    """host -> (status, message, row_count) in quarry.distributed_status; one row per host."""
    rows = cluster.sql(
        "SELECT host_identifier, status, message, row_count "
        f"FROM quarry.distributed_status WHERE campaign_id = '{campaign_id}'"
    )
    assert len(rows) == len({r["host_identifier"] for r in rows})  # no duplicates
    return {
        r["host_identifier"]: (int(r["status"]), r["message"], int(r["row_count"])) for r in rows
    }


def test_a_failing_live_query_reports_each_node_s_error(cluster: QuarryCluster) -> None:
    async def scenario() -> dict:
        nodes = fleet(cluster)
        try:
            report, _ = await run_query_while_nodes_check_in(
                cluster, nodes, "SELECT * FROM no_such_table", "--timeout", "60"
            )
        finally:
            for node in nodes:
                await node.aclose()
        return report

    report = asyncio.run(scenario())
    assert len(report["hosts"]) == FLEET_SIZE
    for host in report["hosts"]:
        assert host["state"] == "FAILED"
        assert host["status"] == 1
        assert host["message"] == "no such table: no_such_table"
    campaign_id = report["campaign"]["campaign_id"]
    assert statuses_in_clickhouse(cluster, campaign_id) == {
        host["host_identifier"]: (1, "no such table: no_such_table", 0) for host in report["hosts"]
    }


def test_a_live_query_for_one_node_goes_only_to_that_node(cluster: QuarryCluster) -> None:
    nodes_listed = cluster.cli_json("nodes", "list")
    target = nodes_listed[0]

    async def scenario() -> tuple[dict, dict[str, list]]:
        nodes = fleet(cluster)
        try:
            return await run_query_while_nodes_check_in(
                cluster,
                nodes,
                "SELECT version FROM osquery_info",
                "--node",
                target["node_id"],
                "--timeout",
                "60",
            )
        finally:
            for node in nodes:
                await node.aclose()

    report, rounds = asyncio.run(scenario())
    assert [h["host_identifier"] for h in report["hosts"]] == [target["host_identifier"]]
    assert report["hosts"][0]["state"] == "ANSWERED"
    campaign_id = report["campaign"]["campaign_id"]
    received_by = {
        host
        for host, per_node in rounds.items()
        if any(r.work is not None and campaign_id in r.work.queries for r in per_node)
    }
    assert received_by == {target["host_identifier"]}
    assert all(per_node for per_node in rounds.values())  # the others read, and got nothing
