"""Config as code, end to end: `quarry config apply|export|show|history|rollback|rollout`.

A whole cluster (`quarry up`) and emulated osquery nodes: each test applies the state it
needs as YAML files, as an operator would from a repository, and checks what every node
fetches from the gateway. Targeting by enroll-secret tag, platform, node and dynamic
label (the label SQL runs on the emulated hosts as live queries); precedence between
blocks; dry runs, atomic applies, export round trips, rollback, staged rollouts; every
validation rule; and the config hash a node computes, as osquery does, against
`config show --node`.

Nodes are revoked when their test ends, so each test sees only its own fleet (node
counts per group, rollout proportions, label campaigns).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from osquery_config.rollout import rollout_bucket
from osquery_config.state import State
from quarry.cli.main import build_parser
from tests.emulator import HostProfile, OsqueryNode
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

_host_numbers = itertools.count(1)
_state_numbers = itertools.count(1)
LABEL_WAIT_S = 90.0

BASE = {
    "targets": {"all": True},
    "config": {
        "options": {"distributed_interval": 10},
        "schedule": {"uptime": {"query": "SELECT * FROM uptime", "interval": 3600}},
    },
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    # Logs are not the subject here: embedded chdb is enough.
    with quarry_cluster(tmp_path_factory.mktemp("config-gitops"), "") as running:
        yield running


class Fleet:
    """Emulated nodes made for one test; revoked when it ends."""

    def __init__(self, cluster: QuarryCluster) -> None:
        self.cluster = cluster
        self.nodes: list[OsqueryNode] = []
        self.node_ids: dict[str, str] = {}  # host identifier -> node id

    def node(self, platform: str = "linux", secret: str = "") -> OsqueryNode:
        number = next(_host_numbers)
        profile = HostProfile.make(number, platform=platform, seed=self.cluster.port_base)  # type: ignore[arg-type]
        node = OsqueryNode(
            server=self.cluster.gateway,
            ca_file=self.cluster.ca_cert,
            enroll_secret=secret or self.cluster.enroll_secret,
            profile=profile,
            host_identifier=f"{profile.hostname}-{self.cluster.port_base}",
            retry_time_scale=0,
        )
        assert run_with(node, node.get_node_key)
        self.nodes.append(node)
        return node

    def node_id(self, node: OsqueryNode) -> str:
        if node.host_identifier not in self.node_ids:
            listed = self.cluster.cli_json("node", "list", "--status", "active")
            self.node_ids |= {n["host_identifier"]: n["node_id"] for n in listed}  # type: ignore[union-attr]
        return self.node_ids[node.host_identifier]

    def revoke_all(self) -> None:
        for node in self.nodes:
            self.cluster.cli("node", "revoke", node.host_identifier, check=False)


@pytest.fixture
def fleet(cluster: QuarryCluster) -> Iterator[Fleet]:
    made = Fleet(cluster)
    yield made
    made.revoke_all()


def run_with(node: OsqueryNode, call: Callable[[], Awaitable[Any]]) -> Any:
    """Run one emulator call in its own event loop, closing the node's connections after."""

    async def go() -> Any:
        async with node:
            return await call()

    return asyncio.run(go())


def fetch(node: OsqueryNode) -> dict[str, Any]:
    config = run_with(node, node.fetch_config)
    assert config is not None, node.last_error
    return config


def schedule_of(node: OsqueryNode) -> set[str]:
    return set(fetch(node).get("schedule", {}))


def write_state(directory: Path, state: dict[str, Any]) -> Path:
    """One YAML file per section, as a repository would hold them."""
    directory.mkdir(parents=True, exist_ok=True)
    for section, content in state.items():
        (directory / f"{section}.yaml").write_text(yaml.safe_dump({section: content}))
    return directory


def apply(
    cluster: QuarryCluster, tmp_path: Path, state: dict[str, Any], *options: str
) -> dict[str, Any]:
    directory = write_state(tmp_path / f"state-{next(_state_numbers)}", state)
    return cluster.cli_json("config", "apply", "-f", str(directory), *options)  # type: ignore[return-value]


def refused(cluster: QuarryCluster, tmp_path: Path, state: dict[str, Any]) -> str:
    """Apply a state that must be refused; the one line of error it prints."""
    directory = write_state(tmp_path / f"state-{next(_state_numbers)}", state)
    result = cluster.cli("config", "apply", "-f", str(directory), check=False)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def versions(cluster: QuarryCluster) -> list[int]:
    return [v["version"] for v in cluster.cli_json("config", "history")]  # type: ignore[union-attr]


def schedule_block(targets: dict[str, Any], *names: str) -> dict[str, Any]:
    queries = {name: {"query": "SELECT * FROM uptime", "interval": 60} for name in names}
    return {"targets": targets, "config": {"schedule": queries}}


def eventually_schedules(expected: list[tuple[OsqueryNode, set[str]]]) -> bool:
    """Fetch until every node's schedule is as expected (the gateway learns by a watch)."""

    def as_expected() -> bool:
        return all(schedule_of(node) == names for node, names in expected)

    return eventually(as_expected)


# --- targeting ------------------------------------------------------------------------


def test_blocks_target_nodes_by_tag_platform_and_node_id(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    secret = cluster.cli_json("secret", "create", "config-prod", "--tag", "prod")["value"]  # type: ignore[index]
    prod_linux = fleet.node("linux", secret)
    plain_linux = fleet.node("linux")
    mac = fleet.node("darwin")
    windows = fleet.node("windows")
    state = {
        "blocks": {
            "base": BASE,
            "prod": schedule_block({"tags": ["prod"]}, "prod_only"),
            "macs": schedule_block({"platforms": ["darwin"]}, "mac_only"),
            "one": schedule_block({"nodes": [fleet.node_id(windows)]}, "that_node"),
        }
    }
    apply(cluster, tmp_path, state)

    assert eventually_schedules(
        [
            (prod_linux, {"uptime", "prod_only"}),
            (plain_linux, {"uptime"}),
            (mac, {"uptime", "mac_only"}),
            (windows, {"uptime", "that_node"}),
        ]
    )


def test_admin_node_tags_target_by_host_identifier(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    tagged, other = fleet.node(), fleet.node()
    state = {
        "blocks": {"base": BASE, "web": schedule_block({"tags": ["web"]}, "web_only")},
        "node_tags": {tagged.host_identifier: ["web"]},
    }
    apply(cluster, tmp_path, state)

    assert eventually_schedules([(tagged, {"uptime", "web_only"}), (other, {"uptime"})])


def test_a_query_for_another_platform_is_not_sent(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    linux, windows = fleet.node("linux"), fleet.node("windows")
    darwin_query = {"query": "SELECT * FROM uptime", "interval": 60, "platform": "darwin"}
    posix_query = {"query": "SELECT * FROM uptime", "interval": 60, "platform": "posix"}
    base = {
        "targets": {"all": True},
        "config": {"schedule": {"mac_q": darwin_query, "posix_q": posix_query}},
    }
    apply(cluster, tmp_path, {"blocks": {"base": base}})

    assert eventually_schedules([(linux, {"posix_q"}), (windows, set())])


def test_the_more_specific_block_wins_and_the_clash_is_reported(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    secret = cluster.cli_json("secret", "create", "config-precedence", "--tag", "db")["value"]  # type: ignore[index]
    named, tagged, linux, mac = (
        fleet.node("linux", secret),
        fleet.node("linux", secret),
        fleet.node("linux"),
        fleet.node("darwin"),
    )

    def interval_block(targets: dict[str, Any], seconds: int) -> dict[str, Any]:
        return {"targets": targets, "config": {"options": {"distributed_interval": seconds}}}

    state = {
        "blocks": {
            "a-all": interval_block({"all": True}, 10),
            "b-linux": interval_block({"platforms": ["linux"]}, 20),
            "c-db": interval_block({"tags": ["db"]}, 30),
            "d-node": interval_block({"nodes": [fleet.node_id(named)]}, 40),
        }
    }
    reply = apply(cluster, tmp_path, state)
    assert any("'c-db' overrides" in c for c in reply["conflicts"]), reply["conflicts"]

    def intervals() -> list[int]:
        return [fetch(n)["options"]["distributed_interval"] for n in (named, tagged, linux, mac)]

    assert eventually(lambda: intervals() == [40, 30, 20, 10]), intervals()
    shown = cluster.cli_json("config", "show", "--node", named.host_identifier)
    assert "options.distributed_interval: block 'd-node' overrides 'c-db'" in shown["conflicts"]  # type: ignore[index]


def test_config_show_node_prints_what_the_node_gets_and_the_hash_it_computes(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    node = fleet.node("darwin")
    state = {"blocks": {"base": BASE, "macs": schedule_block({"platforms": ["darwin"]}, "m")}}
    version = apply(cluster, tmp_path, state)["version"]["version"]
    eventually(lambda: schedule_of(node) == {"uptime", "m"})

    shown: dict[str, Any] = cluster.cli_json("config", "show", "--node", node.host_identifier)  # type: ignore[assignment]
    assert shown["config"] == node.config
    assert shown["config_json"] == node.config_text
    assert shown["sha1"] == node.config_hash
    # What the node reports in osquery_info.config_hash, as osquery computes it.
    assert shown["osquery_info_config_hash"] == node.profile.table("osquery_info")[0]["config_hash"]  # type: ignore[index]
    assert shown["version"] == version
    assert shown["blocks"] == ["base", "macs"]
    assert shown["node_id"] == fleet.node_id(node)
    by_id = cluster.cli_json("config", "show", "--node", fleet.node_id(node))
    assert by_id == shown


def test_config_show_names_an_unknown_node(cluster: QuarryCluster) -> None:
    result = cluster.cli("config", "show", "--node", "no-such-host", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "quarry config: NOT_FOUND: no node named 'no-such-host':"
        " `quarry node list --search no-such-host`"
    )


# --- dynamic labels -------------------------------------------------------------------


def test_a_label_targets_the_nodes_whose_tables_match_and_follows_them(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    member, other = fleet.node(), fleet.node()
    member.profile.users.append(("deploy", 1500))
    state = {
        "blocks": {"base": BASE, "deployers": schedule_block({"labels": ["deploy"]}, "audit")},
        "labels": {
            "deploy": {"query": "SELECT 1 FROM users WHERE username = 'deploy'", "interval": 1}
        },
    }
    apply(cluster, tmp_path, state)
    nodes = [member, other]

    assert asyncio.run(answer_labels_until(nodes, [{"uptime", "audit"}, {"uptime"}]))
    shown = cluster.cli_json("config", "show", "--node", member.host_identifier)
    assert shown["labels"] == ["deploy"]  # type: ignore[index]

    # The hosts change: the next evaluation moves the label.
    member.profile.users.remove(("deploy", 1500))
    other.profile.users.append(("deploy", 1500))
    assert asyncio.run(answer_labels_until(nodes, [{"uptime"}, {"uptime", "audit"}]))


async def answer_labels_until(nodes: list[OsqueryNode], schedules: list[set[str]]) -> bool:
    """Run the nodes' distributed loops (answering label queries) until the schedules match."""
    stop = asyncio.Event()

    async def distributed_loop(node: OsqueryNode) -> None:
        while not stop.is_set():
            await node.run_distributed_once()
            await asyncio.sleep(0.2)

    async def schedules_now() -> list[set[str]]:
        configs = [await node.fetch_config() for node in nodes]
        return [set((c or {}).get("schedule", {})) for c in configs]

    loops = [asyncio.create_task(distributed_loop(node)) for node in nodes]
    try:
        async with asyncio.timeout(LABEL_WAIT_S):
            while await schedules_now() != schedules:
                await asyncio.sleep(0.5)
        return True
    except TimeoutError:
        return False
    finally:
        stop.set()
        await asyncio.gather(*loops)
        for node in nodes:
            await node.aclose()


# --- apply, dry run, export, history --------------------------------------------------


def test_a_dry_run_prints_each_changed_group_and_changes_nothing(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    linux, mac = fleet.node("linux"), fleet.node("darwin")
    apply(cluster, tmp_path, {"blocks": {"base": BASE}})
    before = versions(cluster)
    linux_only = {"platforms": ["linux"]}
    changed = {"blocks": {"base": BASE, "linux": schedule_block(linux_only, "kernel")}}
    directory = write_state(tmp_path / "dry-run", changed)

    result = cluster.cli("config", "apply", "-f", str(directory), "--dry-run")
    assert "## linux" in result.stdout
    assert '+    "kernel": {' in result.stdout
    assert "darwin" not in result.stdout  # the mac's config does not change
    reply = cluster.cli_json("config", "apply", "-f", str(directory), "--dry-run")
    diffs = {d["group"]: d for d in reply["diffs"] if d["diff"]}  # type: ignore[index]
    assert list(diffs) == ["linux"]
    assert diffs["linux"]["nodes"] >= 1

    assert versions(cluster) == before
    assert schedule_of(linux) == schedule_of(mac) == {"uptime"}


def test_an_apply_with_one_bad_block_changes_nothing(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    node = fleet.node()
    apply(cluster, tmp_path, {"blocks": {"base": BASE}})
    eventually(lambda: schedule_of(node) == {"uptime"})
    before = versions(cluster)
    bad_query = {"query": "SELECT 1", "interval": 0}
    state = {
        "blocks": {
            "base": BASE,
            "good": schedule_block({"all": True}, "fine"),
            "broken": {"targets": {"all": True}, "config": {"schedule": {"bad": bad_query}}},
        }
    }

    line = refused(cluster, tmp_path, state)
    assert "broken" in line and "interval" in line
    assert versions(cluster) == before
    assert schedule_of(node) == {"uptime"}


def test_export_then_apply_changes_nothing(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    state = {
        "blocks": {"base": BASE, "web": schedule_block({"tags": ["web"], "labels": ["x"]}, "w")},
        "labels": {"x": {"query": "SELECT 1 FROM users", "interval": 300, "platforms": ["linux"]}},
        "node_tags": {"web-01": ["web", "prod"]},
    }
    applied = apply(cluster, tmp_path, state)
    before = versions(cluster)

    out = tmp_path / "exported"
    exported = cluster.cli_json("config", "export", "-o", str(out))
    assert sorted(Path(p).name for p in exported["files"]) == [  # type: ignore[index]
        "blocks.yaml",
        "labels.yaml",
        "node_tags.yaml",
    ]
    assert State.from_files([out]) == State.from_files([write_state(tmp_path / "again", state)])
    reapplied = cluster.cli_json("config", "apply", "-f", str(out))
    assert reapplied["changed"] is False  # type: ignore[index]
    assert reapplied["version"]["version"] == applied["version"]["version"]  # type: ignore[index]
    assert versions(cluster) == before


def test_rollback_makes_an_earlier_state_live_as_a_new_version(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    node = fleet.node()
    first = apply(cluster, tmp_path, {"blocks": {"base": BASE}}, "--comment", "first")
    second = apply(
        cluster, tmp_path, {"blocks": {"base": BASE, "more": schedule_block({"all": True}, "x")}}
    )
    eventually(lambda: schedule_of(node) == {"uptime", "x"})
    first_version = first["version"]["version"]

    rolled = cluster.cli_json("config", "rollback", str(first_version))
    assert rolled["version"] > second["version"]["version"]  # type: ignore[index]
    assert eventually(lambda: schedule_of(node) == {"uptime"})
    history = cluster.cli_json("config", "history")
    assert history[0]["version"] == rolled["version"]  # type: ignore[index]
    assert any(v["comment"] == "first" for v in history)  # type: ignore[union-attr]
    assert "first" in cluster.cli("config", "history").stdout


# --- staged rollout -------------------------------------------------------------------


def test_a_staged_rollout_reaches_its_share_of_nodes_then_everyone(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    nodes = [fleet.node() for _ in range(20)]
    apply(cluster, tmp_path, {"blocks": {"base": BASE}})
    candidate_state = {"blocks": {"base": BASE, "new": schedule_block({"all": True}, "new_q")}}
    reply = apply(cluster, tmp_path, candidate_state, "--canary", "50%")
    candidate = reply["version"]["version"]

    def on_candidate() -> set[str]:
        return {n.host_identifier for n in nodes if "new_q" in schedule_of(n)}

    # Which nodes get it is decided by their bucket; about half of them.
    expected = {
        n.host_identifier for n in nodes if rollout_bucket(fleet.node_id(n), candidate) < 50
    }
    assert eventually(lambda: on_candidate() == expected), (on_candidate(), expected)
    assert 3 <= len(expected) <= 17

    def running() -> dict[int, int]:
        status = cluster.cli_json("config", "rollout", "status")
        return {r["version"]: r["nodes"] for r in status["running"]}  # type: ignore[index]

    assert eventually(lambda: running().get(candidate) == len(expected)), running()
    status = cluster.cli_json("config", "rollout", "status")
    assert status["rollout"]["candidate_version"] == candidate  # type: ignore[index]
    assert status["rollout"]["percent"] == 50  # type: ignore[index]
    assert "rolling out to 50% of nodes" in cluster.cli("config", "rollout", "status").stdout

    cluster.cli("config", "rollout", "promote")
    assert eventually(lambda: on_candidate() == {n.host_identifier for n in nodes})
    assert cluster.cli_json("config", "rollout", "status")["rollout"]["candidate_version"] == 0  # type: ignore[index]


def test_a_rollout_to_a_count_of_nodes_can_be_aborted(
    cluster: QuarryCluster, fleet: Fleet, tmp_path: Path
) -> None:
    nodes = [fleet.node() for _ in range(5)]
    apply(cluster, tmp_path, {"blocks": {"base": BASE}})
    candidate_state = {"blocks": {"base": BASE, "new": schedule_block({"all": True}, "new_q")}}
    apply(cluster, tmp_path, candidate_state, "--canary-count", "2")

    def on_candidate() -> int:
        return sum("new_q" in schedule_of(n) for n in nodes)

    assert eventually(lambda: on_candidate() == 2), on_candidate()
    cluster.cli("config", "rollout", "abort")
    assert eventually(lambda: on_candidate() == 0), on_candidate()


# --- validation -----------------------------------------------------------------------


def config_block(config: dict[str, Any]) -> dict[str, Any]:
    return {"blocks": {"bad": {"targets": {"all": True}, "config": config}}}


def scheduled(query: object = "SELECT 1", interval: object = 60, name: str = "q") -> dict:
    return config_block({"schedule": {name: {"query": query, "interval": interval}}})


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


INVALID_STATES = {
    "interval 0": (scheduled(interval=0), "interval"),
    "interval over a week": (scheduled(interval=604801), "interval"),
    "reserved prefix query.": (scheduled(name="query.x"), "reserved"),
    "reserved prefix cache.": (scheduled(name="cache.x"), "reserved"),
    "reserved prefix config_views.": (scheduled(name="config_views.x"), "reserved"),
    "reserved suffix epoch": (scheduled(name="x_epoch"), "reserved"),
    "reserved suffix counter": (scheduled(name="x_counter"), "reserved"),
    "reserved pack query name": (
        config_block({"packs": {"p": {"queries": {"q_counter": {"query": "SELECT 1"}}}}}),
        "reserved",
    ),
    "non-string query": (scheduled(query=42), "query"),
    "empty query": (scheduled(query=""), "query"),
    "top-level error key": (config_block({"error": "x"}), "error"),
    "top-level node_invalid key": (config_block({"node_invalid": True}), "node_invalid"),
    "nesting of 32 levels": (config_block({"options": {"deep": deep(32)}}), "nest"),
    "string-valued pack": (config_block({"packs": {"p": "/etc/osquery/p.conf"}}), "pack"),
    "decorator interval": (
        config_block({"decorators": {"interval": {"90": ["SELECT 1"]}}}),
        "60",
    ),
    "float option": (config_block({"options": {"logger_min_status": 1.5}}), "float"),
    "null option": (config_block({"options": {"host_identifier": None}}), "host_identifier"),
    "integer option given a string": (
        config_block({"options": {"distributed_interval": "10"}}),
        "distributed_interval",
    ),
    "unknown label": (
        {"blocks": {"bad": {"targets": {"labels": ["nope"]}, "config": {}}}},
        "nope",
    ),
    "no targets": ({"blocks": {"bad": {"targets": {}, "config": {}}}}, "target"),
    "over 1 MiB": (config_block({"options": {"big": "x" * (1024 * 1024)}}), "limit"),
}


@pytest.mark.parametrize("case", INVALID_STATES, ids=str)
def test_every_validation_rule_refuses_the_apply_with_a_clear_message(
    cluster: QuarryCluster, tmp_path: Path, case: str
) -> None:
    state, words = INVALID_STATES[case]
    line = refused(cluster, tmp_path, state)
    assert line.startswith("quarry config: "), line
    assert words.lower() in line.lower(), line


def test_an_unknown_key_is_a_warning_and_the_rest_applies(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    state = config_block({"schedule": {}, "foo": 1})
    directory = write_state(tmp_path / "unknown-key", state)
    result = cluster.cli("config", "apply", "-f", str(directory))
    assert "warning: block 'bad': unknown key 'foo' (osquery ignores it)" in result.stderr
    assert result.stdout.strip().startswith("version ")


def test_a_file_that_does_not_parse_names_the_file(cluster: QuarryCluster, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("blocks: [unclosed\n")
    result = cluster.cli("config", "apply", "-f", str(broken), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("quarry config: broken.yaml: not valid YAML")
    assert len(result.stderr.strip().splitlines()) == 1


# --- the commands' surface ------------------------------------------------------------

CONFIG_COMMANDS = {
    "apply": ["-f", "x"],
    "export": ["-o", "x"],
    "show": [],
    "history": [],
    "rollback": ["1"],
    "set": ["-f", "x.json"],
    "rollout status": [],
    "rollout promote": [],
    "rollout abort": [],
}


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=str)
def test_every_config_command_takes_json_and_has_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    words = ["config", *command.split()]
    assert build_parser().parse_args([*words, *CONFIG_COMMANDS[command], "--json"]).json
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*words, "--help"])
    assert exited.value.code == 0
    assert f"usage: quarry config {command}" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0%", "100%", "ten", "-5"])
def test_a_canary_must_be_a_percentage_from_1_to_99(value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["config", "apply", "-f", "x", "--canary", value])
