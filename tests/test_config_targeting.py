"""One targeting model for config blocks, live queries and node lists, and the config tree
as files, through the real `quarry` command and one cluster (`quarry up`).

Targets combine AND across kinds and any within one kind, in config blocks as in `query
run`; tags `node_tags` gives in the config count as a node's tags in `node list --tag`,
`node show`, `query run --tag` and what the gateway hands out; `config export` writes a
tree that applies unchanged, even over an older export; a key repeated in one YAML file
is refused with its file and line; every problem of a state is reported at once;
`config set --dry-run` changes nothing; `quarry get` prints a kind, ready for a tree.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.emulator import HostProfile, OsqueryNode
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster

_numbers = itertools.count(1)
BASE = {"targets": {"all": True}, "config": {"schedule": {"up": {"query": "SELECT 1"}}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("config-targeting"), "") as running:
        yield running


def node(cluster: QuarryCluster, platform: str = "linux", secret: str = "") -> OsqueryNode:
    number = next(_numbers)
    profile = HostProfile.make(number, platform=platform, seed=cluster.port_base)  # type: ignore[arg-type]
    made = OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=secret or cluster.enroll_secret,
        profile=profile,
        host_identifier=f"target-{number}-{cluster.port_base}",
        retry_time_scale=0,
    )
    assert run(made, made.get_node_key)
    return made


def run(made: OsqueryNode, call: Any) -> Any:
    async def go() -> Any:
        async with made:
            return await call()

    return asyncio.run(go())


def schedule_of(made: OsqueryNode) -> set[str]:
    config = run(made, made.fetch_config)
    assert config is not None, made.last_error
    return set(config.get("schedule", {}))


def write_tree(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for section, content in state.items():
        (directory / f"{section}.yaml").write_text(yaml.safe_dump({section: content}))
    return directory


def apply(cluster: QuarryCluster, directory: Path, *options: str) -> Any:
    return cluster.cli("config", "apply", "-f", str(directory), *options, check=False)


def history(cluster: QuarryCluster) -> list[int]:
    return [v["version"] for v in cluster.cli_json("config", "history")]  # type: ignore[union-attr]


def schedule_block(targets: dict[str, Any], query: str) -> dict[str, Any]:
    return {"targets": targets, "config": {"schedule": {query: {"query": "SELECT 1"}}}}


def live_query(cluster: QuarryCluster, *targets: str) -> dict[str, Any]:
    """Start a live query and return its report at once (the hosts it targeted)."""
    result = cluster.cli("query", "run", "SELECT 1", *targets, "--timeout", "0.5", "--json",
                         check=False)  # fmt: skip
    return live_query_report(result)  # JSON lines; exit 4 when none answered in time


# --- one model: AND across kinds, any within one --------------------------------------


def test_config_targets_and_live_queries_combine_kinds_the_same_way(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    prod = cluster.cli_json("secret", "create", "and-prod", "--tag", "prod")["value"]  # type: ignore[index]
    linux_prod = node(cluster, "linux", prod)
    linux_plain = node(cluster, "linux")
    mac_prod = node(cluster, "darwin", prod)
    state = {
        "blocks": {
            "base": BASE,
            "linux-prod": schedule_block({"platforms": ["linux"], "tags": ["prod"]}, "lp"),
        }
    }
    result = apply(cluster, write_tree(tmp_path / "and", state))
    assert result.returncode == 0, result.stderr
    # The meaning changed from OR: apply says so.
    assert "block 'linux-prod': targets combine platforms and tags" in result.stderr
    assert schedule_of(linux_prod) == {"up", "lp"}
    assert schedule_of(linux_plain) == {"up"}
    assert schedule_of(mac_prod) == {"up"}

    report = live_query(cluster, "--tag", "prod", "--platform", "linux")
    assert [h["host_identifier"] for h in report["hosts"]] == [linux_prod.host_identifier]
    # And the node list, with a family or the platform itself.
    for platform in ("linux", linux_prod.profile.platform):
        listed = cluster.cli_json("node", "list", "--tag", "prod", "--platform", platform)
        assert [n["host_identifier"] for n in listed] == [linux_prod.host_identifier]  # type: ignore[union-attr]
    for made in (linux_prod, linux_plain, mac_prod):
        cluster.cli("node", "revoke", made.host_identifier)


def test_node_tags_from_the_config_are_tags_everywhere(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    tagged, other = node(cluster), node(cluster)
    state = {
        "blocks": {"base": BASE, "canary": schedule_block({"tags": ["canary"]}, "c")},
        "node_tags": {tagged.host_identifier: ["canary"], "no-such-host": ["canary"]},
    }
    result = apply(cluster, write_tree(tmp_path / "tags", state))
    assert result.returncode == 0, result.stderr
    assert "node_tags: no active node has id or host identifier 'no-such-host'" in result.stderr
    assert schedule_of(tagged) == {"up", "c"}

    def listed() -> list[str]:
        nodes = cluster.cli_json("node", "list", "--tag", "canary")
        return [n["host_identifier"] for n in nodes]  # type: ignore[union-attr]

    assert eventually(lambda: listed() == [tagged.host_identifier], timeout_s=20)
    shown = cluster.cli_json("node", "show", tagged.host_identifier)
    assert "canary" in shown["node"]["tags"]  # type: ignore[index]
    assert "canary" not in shown["node"]["secret_tags"]  # type: ignore[index]

    report = live_query(cluster, "--tag", "canary")
    assert [h["host_identifier"] for h in report["hosts"]] == [tagged.host_identifier]
    # The gateway hands the open campaign to the node the config tagged, and only to it.
    campaign_id = report["campaign"]["campaign_id"]
    work = run(tagged, tagged.distributed_read)
    assert work is not None and campaign_id in work.queries
    other_work = run(other, other.distributed_read)
    assert other_work is None or campaign_id not in other_work.queries
    for made in (tagged, other):
        cluster.cli("node", "revoke", made.host_identifier)


# --- the tree as files ----------------------------------------------------------------


def test_export_writes_a_tree_that_applies_unchanged_even_over_an_older_export(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    with_labels = {
        "blocks": {"base": BASE},
        "labels": {"x": {"query": "SELECT 1 FROM users", "interval": 300}},
    }
    assert apply(cluster, write_tree(tmp_path / "v1", with_labels)).returncode == 0
    out = tmp_path / "exported"
    cluster.cli("config", "export", "-o", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["blocks.yaml", "labels.yaml"]

    # A later state without labels, exported over the older export: no stale labels.yaml.
    assert apply(cluster, write_tree(tmp_path / "v2", {"blocks": {"base": BASE}})).returncode == 0
    exported = cluster.cli_json("config", "export", "-o", str(out))
    assert [Path(p).name for p in exported["removed"]] == ["labels.yaml"]  # type: ignore[index]
    before = history(cluster)
    again = cluster.cli_json("config", "apply", "-f", str(out))
    assert again["changed"] is False  # type: ignore[index]
    assert history(cluster) == before

    # A hand-written file beside it would be read too: refused, or removed with --replace.
    (out / "packs.yaml").write_text(yaml.safe_dump({"blocks": {"base": BASE}}))
    refused = cluster.cli("config", "export", "-o", str(out), check=False)
    assert refused.returncode == 1 and "packs.yaml" in refused.stderr
    cluster.cli("config", "export", "-o", str(out), "--replace")
    assert not (out / "packs.yaml").exists()
    assert cluster.cli_json("config", "apply", "-f", str(out))["changed"] is False  # type: ignore[index]


def test_a_key_repeated_in_one_file_is_refused_with_its_file_and_line(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    tree = tmp_path / "repeated"
    tree.mkdir()
    (tree / "blocks.yaml").write_text(
        "blocks:\n"
        "  base:\n"
        "    targets: {all: true}\n"
        "    config: {schedule: {a: {query: 'SELECT 1'}}}\n"
        "  base:\n"
        "    targets: {all: true}\n"
        "    config: {}\n"
    )
    result = apply(cluster, tree)
    assert result.returncode == 1
    assert "blocks.yaml: line 5: key 'base' is repeated" in result.stderr


def test_every_problem_of_a_state_is_reported_at_once(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    state = {
        "blocks": {
            "one": schedule_block({"all": True}, "q") | {"config": {"schedule": {"q": {}}}},
            "two": {"targets": {"labels": ["nope"]}, "config": {"options": {"x": None}}},
        }
    }
    before = history(cluster)
    result = apply(cluster, write_tree(tmp_path / "broken", state))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.stderr
    assert all(line.startswith("error: blocks.yaml: block ") for line in errors)
    assert "3 problems" in result.stderr.splitlines()[-1]
    assert history(cluster) == before


def test_config_set_dry_run_shows_the_change_and_changes_nothing(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"schedule": {"dry": {"query": "SELECT 2", "interval": 60}}}))
    before = history(cluster)
    result = cluster.cli("config", "set", "-f", str(plain), "--dry-run")
    assert "+" in result.stdout and '"dry"' in result.stdout
    assert "nothing applied" in result.stdout
    assert history(cluster) == before


def test_a_view_applied_alone_is_refused_in_one_line(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    """`get queries` and `get packs` hold only part of each block: applied as the state they
    would drop the rest (the other blocks, their options, the labels), so they are refused,
    in a file or in a tree, and nothing changes."""
    state = {
        "blocks": {
            "base": {"targets": {"all": True}, "config": {"options": {"x": 1}, **BASE["config"]}},
            "fim": {"targets": {"platforms": ["linux"]}, "config": {"packs": {"p": {}}}},
        },
        "labels": {"y": {"query": "SELECT 1 FROM users", "interval": 300}},
    }
    assert apply(cluster, write_tree(tmp_path / "full", state)).returncode == 0
    before = history(cluster)
    for kind in ("queries", "packs"):
        tree = tmp_path / f"with-{kind}"
        tree.mkdir()
        (tree / f"{kind}.yaml").write_text(cluster.cli("get", kind, "-o", "yaml").stdout)
        for target in (tree / f"{kind}.yaml", tree):
            for options in ((), ("--dry-run",)):
                result = apply(cluster, target, *options)
                assert result.returncode == 1, result.stdout
                assert result.stderr.splitlines() == [
                    f"quarry config: {kind}.yaml: a `quarry get {kind}` view, which holds only"
                    " part of each block, cannot be applied (it would drop the rest of the"
                    " state): apply the state files it was read from, or `quarry get blocks`"
                ]
    assert history(cluster) == before


def test_get_prints_a_kind_ready_for_the_tree(cluster: QuarryCluster, tmp_path: Path) -> None:
    state = {
        "blocks": {
            "base": BASE,
            "fim": {"targets": {"platforms": ["linux"]}, "config": {"packs": {"p": {}}}},
        },
        "labels": {"x": {"query": "SELECT 1 FROM users", "interval": 300}},
    }
    assert apply(cluster, write_tree(tmp_path / "get", state)).returncode == 0
    tree = tmp_path / "from-get"
    tree.mkdir()
    for kind in ("blocks", "labels"):
        (tree / f"{kind}.yaml").write_text(cluster.cli("get", kind, "-o", "yaml").stdout)
    assert cluster.cli_json("config", "apply", "-f", str(tree))["changed"] is False  # type: ignore[index]

    queries = json.loads(cluster.cli("get", "queries", "-o", "json").stdout)
    assert queries == {"view": "queries", "blocks": {"base": BASE}}
    packs = json.loads(cluster.cli("get", "packs", "-o", "json").stdout)
    assert packs == {"view": "packs", "blocks": {"fim": state["blocks"]["fim"]}}
    value = cluster.cli_json("secret", "create", "get-me")["value"]  # type: ignore[index]
    secrets = cluster.cli("get", "secrets", "-o", "yaml").stdout
    assert "get-me" in secrets and value not in secrets
