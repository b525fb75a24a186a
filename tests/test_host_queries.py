"""Vitals and software inventory end to end (docs/inventory.md, ADR 0019): a real cluster
on short cadences, emulated hosts of three platforms running osquery's distributed loop.

What must hold: a gateway asks nobody in a node's first read (the fleet is spread, never
asked at once); each host is asked each group once per period, whether it answers, fails
(a table its osquery lacks) or never answers; answers reach ClickHouse once, a re-sent
write included, and no campaign is created; the CLI shows vitals with their age, finds
stale hosts and hosts by OS version, and lists software with first and last seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Iterator

import pytest

from osquery_config.host_queries import parse_wire_name
from tests.emulator import HostProfile, OsqueryNode, QueryResult
from tests.emulator.node import DistributedRound
from tests.quarry_cluster import QuarryCluster, quarry_cluster

VITALS_S, SOFTWARE_S = 3, 6
CADENCES = {
    "QUARRY_HOST_VITALS_INTERVAL_S": str(VITALS_S),
    "QUARRY_HOST_SOFTWARE_INTERVAL_S": str(SOFTWARE_S),
}
SOFTWARE_PERIODS = 2  # run until every answering host answered software this many times


@dataclasses.dataclass
class Fleet:
    nodes: dict[str, OsqueryNode]  # role -> node
    rounds: dict[str, list[DistributedRound]]
    silent_reads: list[dict]  # what the silent host's reads handed out

    def host(self, role: str) -> str:
        return self.nodes[role].host_identifier

    def node_id(self, cluster: QuarryCluster, role: str) -> str:
        rows = cluster.cli_json("node", "list", "--search", self.host(role))
        return rows[0]["node_id"]  # type: ignore[index]


def make_node(cluster: QuarryCluster, profile: HostProfile) -> OsqueryNode:
    return OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=profile,
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )


def asked(queries: dict) -> set[tuple[str, int]]:
    """(group, slot) of every scheduled host query in a read's queries."""
    wires = [parse_wire_name(name) for name in queries]
    return {(wire.group, wire.slot) for wire in wires if wire is not None}


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("inventory"), log_store_url, CADENCES) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(cluster: QuarryCluster) -> Fleet:
    base = cluster.port_base
    profiles = {
        "linux": HostProfile.make(1, "linux", seed=base),
        # An older osquery without python_packages: that query fails on every period.
        "old-linux": dataclasses.replace(
            HostProfile.make(2, "linux", seed=base), missing_tables=frozenset({"python_packages"})
        ),
        "mac": HostProfile.make(3, "darwin", seed=base),
        "windows": HostProfile.make(4, "windows", seed=base),
        "silent": HostProfile.make(5, "linux", seed=base),
    }
    return asyncio.run(run_fleet(cluster, profiles))


async def run_fleet(cluster: QuarryCluster, profiles: dict[str, HostProfile]) -> Fleet:
    nodes = {role: make_node(cluster, profile) for role, profile in profiles.items()}
    fleet = Fleet(nodes, {role: [] for role in nodes if role != "silent"}, [])
    for node in nodes.values():
        assert await node.get_node_key()
    answering = [role for role in nodes if role != "silent"]

    def software_answers(role: str) -> int:
        return len(
            {slot for r in fleet.rounds[role] for g, slot in asked(r.results) if g == "software"}
        )

    async def loop(role: str) -> None:
        node = nodes[role]
        while not all(software_answers(r) >= SOFTWARE_PERIODS for r in answering):
            if role == "silent":  # reads, never runs or writes: a host that never answers
                work = await node.distributed_read()
                fleet.silent_reads.append(work.queries if work else {})
            else:
                fleet.rounds[role].append(await node.run_distributed_once())
            await asyncio.sleep(0.25)

    try:
        await asyncio.wait_for(asyncio.gather(*(loop(role) for role in nodes)), 120)
        # osquery re-sends a write whose answer it did not see: the last one, twice more.
        node = nodes["linux"]
        last = next(r for r in reversed(fleet.rounds["linux"]) if asked(r.results))
        for _ in range(2):
            assert await node.distributed_write(last.results)
    finally:
        for node in nodes.values():
            await node.aclose()
    return fleet


def test_no_host_is_asked_in_its_first_read_and_each_group_once_per_period(fleet: Fleet) -> None:
    for role, rounds in fleet.rounds.items():
        assert rounds[0].work is not None and asked(rounds[0].work.queries) == set(), role
        per_slot = Counter(key for r in rounds if r.work for key in asked(r.work.queries))
        assert per_slot and set(per_slot.values()) == {1}, (role, per_slot)
        assert {group for group, _ in per_slot} == {"vitals", "software"}
    # The host that never answers is not asked again and again either.
    silent = Counter(key for queries in fleet.silent_reads for key in asked(queries))
    assert not asked(fleet.silent_reads[0])
    assert silent and set(silent.values()) == {1}


def test_scheduled_queries_need_no_campaign_and_ask_for_no_acceleration(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    assert cluster.cli_json("query", "list", "--include-labels") == []
    reads = [r.work for rounds in fleet.rounds.values() for r in rounds if r.work]
    assert any(asked(work.queries) for work in reads)
    assert all(work.accelerate is None for work in reads if asked(work.queries))


def test_each_answer_is_stored_once_and_errors_are_recorded(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    hosts = ", ".join(f"'{fleet.host(role)}'" for role in fleet.rounds)
    repeated = cluster.sql(
        "SELECT host_identifier, query_name, slot, count() AS answers"
        f" FROM quarry.host_query_status WHERE host_identifier IN ({hosts})"
        " GROUP BY host_identifier, query_name, slot HAVING answers > 1"
    )
    assert repeated == []
    # Rows: one copy of each row per answer (the re-sent write of "linux" included).
    copies = cluster.sql(
        "SELECT host_identifier, query_name, row_index, batch_id, count() AS copies"
        f" FROM quarry.host_query_rows WHERE host_identifier IN ({hosts})"
        " GROUP BY host_identifier, query_name, row_index, batch_id HAVING copies > 1"
    )
    assert copies == []
    answered = {
        (r["group_name"], r["slot"])
        for r in cluster.sql(
            "SELECT DISTINCT group_name, slot FROM quarry.host_query_status"
            f" WHERE host_identifier = '{fleet.host('linux')}'"
        )
    }
    asked_of_linux = {k for r in fleet.rounds["linux"] if r.work for k in asked(r.work.queries)}
    assert answered == asked_of_linux

    failures = cluster.sql(
        "SELECT query_name, status, message FROM quarry.host_query_status"
        f" WHERE host_identifier = '{fleet.host('old-linux')}' AND status != 0"
    )
    software_slots = {
        slot for r in fleet.rounds["old-linux"] if r.work
        for group, slot in asked(r.work.queries) if group == "software"
    }  # fmt: skip
    assert failures == [
        {"query_name": "python_packages", "status": 1, "message": "no such table: python_packages"}
    ] * len(software_slots)


def test_node_show_gives_the_latest_vitals_with_their_age(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    shown = cluster.cli_json("node", "show", fleet.host("mac"))
    vitals = shown["vitals"]  # type: ignore[index]
    assert vitals["os_version"]["rows"] == [
        {"name": "macOS", "version": "14.5", "major": "14", "minor": "5", "patch": "0",
         "build": "23F79", "platform": "darwin", "arch": "arm64"}
    ]  # fmt: skip
    assert vitals["memory"]["rows"][0]["page_size"] == "16384"
    assert [row["path"] for row in vitals["disk_space"]["rows"]] == ["/", "/System/Volumes/Data"]
    assert all(entry["age_s"] >= 0 for entry in vitals.values())
    text = cluster.cli("node", "show", fleet.host("windows")).stdout
    assert "disk_space (" in text and "device_id=C:" in text and " ago" in text
    assert "vitals:" in cluster.cli("node", "show", fleet.host("silent")).stdout


def test_node_list_finds_stale_hosts_and_hosts_by_os_version(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    stale = cluster.cli_json("node", "list", "--stale", "--stale-after", "600")
    assert [n["host_identifier"] for n in stale] == [fleet.host("silent")]  # type: ignore[index]
    macs = cluster.cli_json("node", "list", "--os-version", "macOS 14")
    assert [n["host_identifier"] for n in macs] == [fleet.host("mac")]  # type: ignore[index]
    assert macs[0]["vitals"]["os_version"] == "14.5"  # type: ignore[index]
    table = cluster.cli("node", "list", "--os-version", "22.04").stdout
    assert fleet.host("linux") in table and "vitals_age" in table
    assert fleet.host("mac") not in table


def test_software_lists_packages_with_first_and_last_seen(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    linux = fleet.nodes["linux"].profile.packages["deb_packages"]
    version = next(v for name, v, _ in linux if name == "openssl")
    hosts = cluster.cli_json("software", "hosts", "openssl", "--version", version)
    assert fleet.host("linux") in [h["host_identifier"] for h in hosts]  # type: ignore[index]
    mine = next(h for h in hosts if h["host_identifier"] == fleet.host("linux"))  # type: ignore[union-attr,index]
    assert mine["source"] == "deb_packages"
    # Answered in two software periods: first and latest sightings differ.
    assert mine["last_seen_at"] > mine["first_seen_at"]

    listed = cluster.cli_json("software", "list", "--name", "chrome")
    sources = {(row["name"], row["source"]) for row in listed}  # type: ignore[index,union-attr]
    assert ("Google Chrome.app", "apps") in sources and ("Google Chrome", "programs") in sources
    text = cluster.cli("software", "hosts", "7-Zip 23.01 (x64)").stdout
    assert fleet.host("windows") in text and "first_seen" in text


def test_a_write_with_unreadable_host_query_names_is_answered_and_stores_nothing(
    cluster: QuarryCluster,
) -> None:
    """A name in our prefix that does not parse (a later Quarry's, or garbage) is dropped:
    refusing the write would make osquery send it for ever. Its neighbours are stored."""
    profile = HostProfile.make(9, "linux", seed=cluster.port_base)
    ok_name = "quarry__vitals__uptime__7"
    results = {
        "quarry__bogus": QueryResult(rows=[{"x": "1"}], status=0),
        "quarry__vitals__uptime__notaslot": QueryResult(rows=[{"x": "2"}], status=0),
        ok_name: QueryResult(rows=[{"total_seconds": "5"}], status=0),
    }

    async def write() -> tuple[bool, str]:
        async with make_node(cluster, profile) as node:
            assert await node.get_node_key()
            return await node.distributed_write(results), node.host_identifier

    written, host = asyncio.run(write())
    assert written
    stored = cluster.sql(
        f"SELECT query_name, slot FROM quarry.host_query_status WHERE host_identifier = '{host}'"
    )
    assert stored == [{"query_name": "uptime", "slot": 7}]
    rows = cluster.sql(
        f"SELECT column_values FROM quarry.host_query_rows WHERE host_identifier = '{host}'"
    )
    assert rows == [{"column_values": ["5"]}]
