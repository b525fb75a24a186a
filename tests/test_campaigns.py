"""Live query campaigns end to end: targeting, the per-host account, discovery, cancel, scale.

One cluster for the module and one small fleet of emulated nodes over real HTTPS, with
different platforms, enroll-secret tags and osquery versions. Each scenario runs the
nodes' distributed loops (read, run, write) while a campaign is followed, then checks
the account the distributed service keeps and what each node actually received.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.live_queries import CampaignIndex, OpenCampaign
from gateway.node_cache import NodeIdentity
from osquery_config.percentage_shard import in_shard
from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.serving.grpc_runtime import sync_channel
from tests.emulator import HostProfile, OsqueryNode
from tests.emulator.node import ACCELERATED_INTERVAL_S, DistributedRound, QueryResult
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster

HostState = distributed_pb2.HostState
LOOP_PAUSE_S = 0.1


@dataclass
class Fleet:
    cluster: QuarryCluster
    nodes: dict[str, OsqueryNode] = field(default_factory=dict)
    node_ids: dict[str, str] = field(default_factory=dict)  # name -> node id
    _count: int = 0

    def add(self, name: str, secret: str = "", platform: str = "linux", version: str = "5.23.1"):
        self._count += 1
        profile = HostProfile.make(self._count, platform=platform, seed=self.cluster.port_base)
        node = OsqueryNode(
            server=self.cluster.gateway,
            ca_file=self.cluster.ca_cert,
            enroll_secret=secret or self.cluster.enroll_secret,
            profile=profile,
            host_identifier=f"{name}-{profile.hardware_uuid.lower()}",
            version=version,
            retry_time_scale=0,
        )
        self.nodes[name] = node
        return node

    async def enroll(self, *names: str) -> None:
        for name in names:
            assert await self.nodes[name].get_node_key()
        listed = self.cluster.cli_json("nodes", "list")
        by_host = {n["host_identifier"]: n["node_id"] for n in listed}  # type: ignore[index]
        for name in names:
            self.node_ids[name] = by_host[self.nodes[name].host_identifier]
        await close_all(self.nodes[name] for name in names)  # each scenario has its own loop

    def name_of(self, host_identifier: str) -> str:
        return next(n for n, node in self.nodes.items() if node.host_identifier == host_identifier)


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry-campaigns"), log_store_url) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(cluster: QuarryCluster) -> Fleet:
    web = cluster.cli_json("secret", "create", "web-secret", "--tag", "web")["value"]  # type: ignore[index]
    db = cluster.cli_json("secret", "create", "db-secret", "--tag", "db")["value"]  # type: ignore[index]
    fleet = Fleet(cluster)
    fleet.add("linux-web-old", web, "linux", "5.9.0")
    fleet.add("mac-web", web, "darwin", "5.12.1")
    fleet.add("win-db", db, "windows", "5.20.0")
    fleet.add("linux-plain", "", "linux", "5.23.1")
    fleet.nodes["linux-web-old"].profile.users.append(("deploy", 1500))

    asyncio.run(fleet.enroll(*fleet.nodes))
    return fleet


def stub(cluster: QuarryCluster) -> distributed_pb2_grpc.DistributedServiceStub:
    channel = sync_channel(
        f"127.0.0.1:{cluster.port_base + 3}",
        (cluster.state_dir / "admin_token").read_text().strip(),
    )
    return distributed_pb2_grpc.DistributedServiceStub(channel)


async def close_all(nodes) -> None:
    for node in nodes:
        await node.aclose()


async def with_loops(nodes: list[OsqueryNode], work, rounds: dict[str, list] | None = None):
    """Run `work()` in a thread while every node loops over its distributed read/write."""
    stop = asyncio.Event()
    rounds = rounds if rounds is not None else {}

    async def loop(node: OsqueryNode) -> None:
        while not stop.is_set():
            rounds.setdefault(node.host_identifier, []).append(await node.run_distributed_once())
            await asyncio.sleep(LOOP_PAUSE_S)

    tasks = [asyncio.create_task(loop(node)) for node in nodes]
    try:
        return await asyncio.to_thread(work)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await close_all(nodes)


def received(rounds: list[DistributedRound], campaign_id: str) -> bool:
    return any(r.work is not None and campaign_id in r.work.queries for r in rounds)


def run_cli(fleet: Fleet, names: list[str], *args: str) -> tuple[dict, dict[str, list]]:
    """`quarry query run ... --json` while the named nodes loop; (report, rounds by name)."""
    rounds: dict[str, list] = {}
    nodes = [fleet.nodes[n] for n in names]
    result = asyncio.run(
        with_loops(
            nodes,
            lambda: fleet.cluster.cli("query", "run", *args, "--ttl", "30", "--json", check=False),
            rounds=rounds,
        )
    )
    by_name = {fleet.name_of(host): r for host, r in rounds.items()}
    return live_query_report(result), by_name


def states(report: dict, fleet: Fleet) -> dict[str, str]:
    return {fleet.name_of(h["host_identifier"]): h["state"] for h in report["hosts"]}


# --- targeting --------------------------------------------------------------------------

EVERYONE = ["linux-web-old", "mac-web", "win-db", "linux-plain"]
TARGETING = {
    "all": (["--all"], EVERYONE),
    "tag": (["--tag", "web"], ["linux-web-old", "mac-web"]),
    "two tags": (["--tag", "web", "--tag", "db"], ["linux-web-old", "mac-web", "win-db"]),
    "platform": (["--platform", "linux"], ["linux-web-old", "linux-plain"]),
    "tag and platform": (["--tag", "web", "--platform", "darwin"], ["mac-web"]),
    "min version": (["--min-version", "5.12.0"], ["mac-web", "win-db", "linux-plain"]),
    "min version and tag": (["--min-version", "5.20", "--tag", "db"], ["win-db"]),
}


@pytest.mark.parametrize("variant", list(TARGETING))
def test_each_targeting_variant_reaches_exactly_its_nodes(fleet: Fleet, variant: str) -> None:
    flags, expected = TARGETING[variant]
    report, rounds = run_cli(fleet, EVERYONE, "SELECT 1 AS one", *flags, "--timeout", "30")
    assert states(report, fleet) == {name: "ANSWERED" for name in expected}
    campaign_id = report["campaign"]["campaign_id"]
    assert {name for name, r in rounds.items() if received(r, campaign_id)} == set(expected)
    assert report["counts"]["answered"] == len(expected)


def test_explicit_nodes_and_a_percentage_shard(fleet: Fleet) -> None:
    chosen = [fleet.node_ids["win-db"], fleet.node_ids["linux-plain"]]
    report, _ = run_cli(
        fleet, EVERYONE, "SELECT 1", "--node", chosen[0], "--node", chosen[1], "--timeout", "30"
    )
    assert states(report, fleet) == {"win-db": "ANSWERED", "linux-plain": "ANSWERED"}

    report, rounds = run_cli(fleet, EVERYONE, "SELECT 1", "--percent", "50", "--timeout", "30")
    campaign_id = report["campaign"]["campaign_id"]
    sharded = {n for n in EVERYONE if in_shard(campaign_id, fleet.node_ids[n], 50)}
    assert states(report, fleet) == {name: "ANSWERED" for name in sharded}
    assert {name for name, r in rounds.items() if received(r, campaign_id)} == sharded


def test_the_percentage_shard_is_stable_and_proportionate() -> None:
    pairs = [(f"q_{i}", f"node-{i * 7}") for i in range(2000)]
    for percent in (1, 10, 33.3, 50, 99):
        chosen = [in_shard(c, n, percent) for c, n in pairs]
        assert chosen == [in_shard(c, n, percent) for c, n in pairs]
        # Statistical, not exact: within a few points of the share asked for.
        assert abs(sum(chosen) / len(pairs) * 100 - percent) < 4


def test_watch_streams_progress_and_the_node_is_accelerated(fleet: Fleet) -> None:
    node = fleet.nodes["mac-web"]
    node.accelerated_until = 0.0  # as if it never had live queries
    assert node.distributed_pause_s() == node.distributed_interval_s
    rounds: dict[str, list] = {}
    result = asyncio.run(
        with_loops(
            [node],
            lambda: fleet.cluster.cli(
                "query",
                "run",
                "SELECT hostname FROM system_info",
                "--node",
                fleet.node_ids["mac-web"],
                "--watch",
            ),
            rounds,
        )
    )
    assert "1 answered, 0 failed, 1/1 accounted for" in result.stderr
    assert ": answered 1 rows" in result.stderr
    # The host's row, streamed as it answered (before the account).
    assert f"{node.host_identifier}  hostname={node.profile.hostname}" in result.stdout
    assert "answered 1" in result.stdout  # the account's counts line
    assert node.distributed_pause_s() == ACCELERATED_INTERVAL_S  # accelerate was obeyed


def test_labels_target_their_members(fleet: Fleet, tmp_path: Path) -> None:
    cluster = fleet.cluster
    state = {
        "blocks": {"base": {"targets": {"all": True}, "config": {}}},
        "labels": {"deployers": {"query": "SELECT 1 FROM users WHERE username = 'deploy'",
                                 "interval": 1}},
    }  # fmt: skip
    (tmp_path / "state.json").write_text(json.dumps(state))
    cluster.cli_json("config", "apply", "-f", str(tmp_path / "state.json"))
    member = fleet.node_ids["linux-web-old"]

    def labelled() -> bool:
        shown = cluster.cli_json("config", "show", "--node", member)
        return shown.get("labels") == ["deployers"]  # type: ignore[union-attr]

    try:
        assert asyncio.run(
            with_loops([fleet.nodes[n] for n in EVERYONE], lambda: eventually(labelled))
        )
        report, _ = run_cli(fleet, EVERYONE, "SELECT 2", "--label", "deployers")
        assert states(report, fleet) == {"linux-web-old": "ANSWERED"}
    finally:
        del state["labels"]
        (tmp_path / "state.json").write_text(json.dumps(state))
        cluster.cli_json("config", "apply", "-f", str(tmp_path / "state.json"))


# --- the account: offline, expired, late joiners, cancel ---------------------------------


def test_offline_and_expired_hosts_are_accounted_and_a_late_node_still_gets_it(
    fleet: Fleet,
) -> None:
    cluster = fleet.cluster
    fleet.add("sleeper")
    fleet.add("silent")
    asyncio.run(fleet.enroll("sleeper", "silent"))
    time.sleep(3.5)  # neither checks in: with --offline-after 2 they count as offline
    # Everyone, for 6 s; the fleet answers, "sleeper" comes back mid-campaign, "silent" never.
    started = stub(cluster).StartQuery(
        distributed_pb2.StartQueryRequest(sql="SELECT 1", ttl_seconds=6, offline_after_seconds=2),
        timeout=10,
    )
    report = stub(cluster).GetCampaign(
        distributed_pb2.GetCampaignRequest(campaign_id=started.campaign_id), timeout=10
    )
    launch = {fleet.name_of(h.host_identifier): h.state for h in report.hosts}
    assert launch["sleeper"] == launch["silent"] == HostState.OFFLINE
    assert report.counts["offline"] >= 2

    late = fleet.add("late")

    async def scenario() -> None:
        await fleet.enroll("late")
        await with_loops(
            [fleet.nodes[n] for n in [*EVERYONE, "sleeper", "late"]],
            lambda: eventually(lambda: closed(cluster, started.campaign_id), 15),
        )

    asyncio.run(scenario())

    report = stub(cluster).GetCampaign(
        distributed_pb2.GetCampaignRequest(campaign_id=started.campaign_id), timeout=10
    )
    final = {fleet.name_of(h.host_identifier): HostState.State.Name(h.state) for h in report.hosts}
    assert final["silent"] == "OFFLINE"  # never came back: still offline, not expired
    assert final["sleeper"] == "ANSWERED"  # came back within the window
    assert final["late"] == "ANSWERED"  # enrolled after launch, recorded when it read it
    assert all(final[n] == "ANSWERED" for n in EVERYONE)
    assert report.campaign.targeted == len(EVERYONE) + 2  # "late" was not there at launch
    assert late.host_identifier


def closed(cluster: QuarryCluster, campaign_id: str) -> bool:
    listed = stub(cluster).ListCampaigns(distributed_pb2.ListCampaignsRequest(), timeout=10)
    return campaign_id not in {c.campaign_id for c in listed.campaigns}


def test_an_online_host_that_never_reads_expires(fleet: Fleet) -> None:
    node_id = fleet.node_ids["win-db"]
    started = stub(fleet.cluster).StartQuery(
        distributed_pb2.StartQueryRequest(sql="SELECT 1", node_ids=[node_id], ttl_seconds=1),
        timeout=10,
    )
    request = distributed_pb2.GetCampaignRequest(campaign_id=started.campaign_id)

    def expired() -> distributed_pb2.CampaignReport | None:
        report = stub(fleet.cluster).GetCampaign(request, timeout=10)
        return report if report.counts["expired"] else None

    report = eventually(expired, 10)
    assert report is not None
    assert [(h.node_id, h.state) for h in report.hosts] == [(node_id, HostState.EXPIRED)]
    assert report.counts["targeted"] == 0


def test_a_cancelled_campaign_no_longer_reaches_hosts_that_have_not_read_it(fleet: Fleet) -> None:
    distributed = stub(fleet.cluster)
    node_ids = [fleet.node_ids["win-db"], fleet.node_ids["linux-plain"]]
    started = distributed.StartQuery(
        distributed_pb2.StartQueryRequest(sql="SELECT 1", node_ids=node_ids, ttl_seconds=60),
        timeout=10,
    )
    reader = fleet.nodes["win-db"]

    async def read_then_cancel() -> tuple[DistributedRound, DistributedRound]:
        await asyncio.sleep(0.5)  # the gateway learns of the campaign
        first = await reader.run_distributed_once()
        distributed.CancelCampaign(
            distributed_pb2.GetCampaignRequest(campaign_id=started.campaign_id), timeout=10
        )
        await asyncio.sleep(1.0)  # ... and of its cancellation
        after = await fleet.nodes["linux-plain"].run_distributed_once()
        await close_all([reader, fleet.nodes["linux-plain"]])
        return first, after

    first, after = asyncio.run(read_then_cancel())
    assert received([first], started.campaign_id)
    assert not received([after], started.campaign_id)
    report = distributed.GetCampaign(
        distributed_pb2.GetCampaignRequest(campaign_id=started.campaign_id), timeout=10
    )
    assert report.campaign.cancelled
    by_name = {fleet.name_of(h.host_identifier or h.node_id): h.state for h in report.hosts}
    assert by_name == {"win-db": HostState.ANSWERED, "linux-plain": HostState.EXPIRED}


# --- discovery, duplicates, many campaigns ------------------------------------------------


def test_nodes_whose_discovery_query_finds_nothing_do_not_run_the_query(fleet: Fleet) -> None:
    report, rounds = run_cli(
        fleet,
        EVERYONE,
        "SELECT 3 AS three",
        "--discovery",
        "SELECT 1 FROM users WHERE username = 'deploy'",
        "--ttl",
        "3",
    )
    campaign_id = report["campaign"]["campaign_id"]
    found = {name: state for name, state in states(report, fleet).items() if name in EVERYONE}
    assert found.pop("linux-web-old") == "ANSWERED"
    # The others read it (delivered) and, as osquery does, never ran or answered it.
    assert set(found.values()) == {"DELIVERED"}
    for name in found:
        assert received(rounds[name], campaign_id)
        assert not any(campaign_id in r.results for r in rounds[name])
        assert all(
            r.work.discovery == {campaign_id: r.work.discovery[campaign_id]}
            for r in rounds[name]
            if r.work and campaign_id in r.work.queries
        )


def test_a_resent_write_is_stored_once_and_the_first_answer_wins(fleet: Fleet) -> None:
    cluster = fleet.cluster
    node = fleet.nodes["linux-plain"]
    started = stub(cluster).StartQuery(
        distributed_pb2.StartQueryRequest(
            sql="SELECT hostname FROM system_info",
            node_ids=[fleet.node_ids["linux-plain"]],
            ttl_seconds=30,
        ),
        timeout=10,
    )

    async def answer_three_times() -> tuple[bool, bool]:
        await asyncio.sleep(0.5)  # the gateway learns of the campaign
        first = await node.run_distributed_once()
        again = await node.distributed_write(first.results)  # osquery re-sends a write
        failed = {started.campaign_id: QueryResult(rows=[], status=1, message="late failure")}
        later = await node.distributed_write(failed)
        await node.aclose()
        return again, later

    assert asyncio.run(answer_three_times()) == (True, True)
    report = stub(cluster).GetCampaign(
        distributed_pb2.GetCampaignRequest(campaign_id=started.campaign_id), timeout=10
    )
    [host] = report.hosts
    assert (host.state, host.row_count, host.message) == (HostState.ANSWERED, 1, "")
    rows = eventually(
        lambda: cluster.sql(
            "SELECT count() AS n FROM quarry.distributed_results"
            f" WHERE campaign_id = '{started.campaign_id}'"
        )
    )
    assert int(rows[0]["n"]) == 1


def test_more_than_a_hundred_campaigns_at_once(fleet: Fleet) -> None:
    distributed = stub(fleet.cluster)
    names = ["mac-web", "win-db"]
    node_ids = [fleet.node_ids[n] for n in names]
    campaign_ids = [
        distributed.StartQuery(
            distributed_pb2.StartQueryRequest(
                sql=f"SELECT {i} AS i", node_ids=node_ids, ttl_seconds=60
            ),
            timeout=10,
        ).campaign_id
        for i in range(120)
    ]

    def all_answered() -> bool:
        return all(
            distributed.GetCampaign(
                distributed_pb2.GetCampaignRequest(campaign_id=c, counts_only=True), timeout=10
            ).counts["answered"]
            == len(names)
            for c in campaign_ids
        )

    assert asyncio.run(
        with_loops([fleet.nodes[n] for n in names], lambda: eventually(all_answered))
    )


def test_a_read_looks_only_at_the_campaigns_that_can_concern_its_node() -> None:
    index = CampaignIndex()
    for i in range(300):  # campaigns for other explicit nodes, other tags, other platforms
        index.add(open_campaign(f"q_node_{i}", node_ids=frozenset({f"other-{i}"})))
        index.add(open_campaign(f"q_tag_{i}", is_open=True, tags=frozenset({f"tag-{i}"})))
    index.add(open_campaign("q_windows", is_open=True, platforms=frozenset({"windows"})))
    index.add(open_campaign("q_mine", node_ids=frozenset({"n1"})))
    index.add(open_campaign("q_web", is_open=True, tags=frozenset({"web"})))
    index.add(open_campaign("q_linux", is_open=True, platforms=frozenset({"linux"})))
    index.add(open_campaign("q_all", is_open=True))
    node = NodeIdentity(node_id="n1", host_identifier="h1", platform="ubuntu", tags=("web",))
    assert index.candidates(node, "linux") == {"q_mine", "q_web", "q_linux", "q_all"}
    index.remove("q_web")
    assert index.candidates(node, "linux") == {"q_mine", "q_linux", "q_all"}


def open_campaign(campaign_id: str, **targeting) -> OpenCampaign:
    defaults = {
        "sql": "SELECT 1",
        "discovery_sql": "",
        "expires_at": int(time.time()) + 60,
        "is_open": False,
        "tags": frozenset(),
        "platforms": frozenset(),
        "percent": 0.0,
        "node_ids": frozenset(),
    }
    return OpenCampaign(campaign_id=campaign_id, **{**defaults, **targeting})
