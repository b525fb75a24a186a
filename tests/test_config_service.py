"""The config service as a real process, with real enroll and distributed services, over gRPC.

Nodes enroll through EnrollService.Enroll with host details naming their platform and
with secrets carrying tags, so targeting sees what a real fleet gives it. Label
queries are answered the way the gateway reports answers (RecordActivity).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from osquery_config.rollout import rollout_bucket
from osquery_config.state import State
from protos.v1 import (
    config_pb2,
    config_pb2_grpc,
    distributed_pb2,
    distributed_pb2_grpc,
    enroll_pb2,
    enroll_pb2_grpc,
)
from quarry.serving.grpc_runtime import sync_channel
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.service_processes import ServiceProcess
from tests.test_services_grpc import StreamReader

SECRET = "config-test-secret"
RPC_TIMEOUT_S = 10.0
# Plain linux nodes beside the named ones, so rollout proportions have a fleet to pick from.
EXTRA_LINUX_NODES = 12
LABEL_SQL = "SELECT 1 FROM processes WHERE name = 'dockerd'"


class Fleet:
    """The running services, their stubs, and the node id of each enrolled host."""

    def __init__(self, processes: dict[str, ServiceProcess]) -> None:
        self.processes = processes
        self.enroll = enroll_pb2_grpc.EnrollServiceStub(sync_channel(processes["enroll"].addr))
        self.distributed = distributed_pb2_grpc.DistributedServiceStub(
            sync_channel(processes["distributed"].addr)
        )
        self.config = config_pb2_grpc.ConfigServiceStub(sync_channel(processes["config"].addr))
        self.node_ids: dict[str, str] = {}

    def reconnect_config(self) -> None:
        self.config = config_pb2_grpc.ConfigServiceStub(sync_channel(self.processes["config"].addr))

    def enroll_host(self, name: str, platform: str, secret: str = SECRET) -> str:
        details = {
            "os_version": {"platform": platform},
            "system_info": {"hostname": name, "uuid": f"uuid-{name}"},
        }
        response = self.enroll.Enroll(
            enroll_pb2.EnrollRequest(
                enroll_secret=secret,
                host_identifier=name,
                host_details_json=json.dumps(details),
                remote_addr="127.0.0.1",
            ),
            timeout=RPC_TIMEOUT_S,
        )
        assert response.ok, response.reason
        self.node_ids[name] = response.node.node_id
        return response.node.node_id

    def node_config(self, name: str) -> config_pb2.NodeConfigResponse:
        request = config_pb2.NodeConfigRequest(node_id=self.node_ids[name])
        return self.config.NodeConfig(request, timeout=RPC_TIMEOUT_S)

    def active_names(self) -> list[str]:
        return [name for name in self.node_ids if name != "pending-1"]

    def apply(self, state: dict, **fields: object) -> config_pb2.ApplyStateResponse:
        request = config_pb2.ApplyStateRequest(state_json=json.dumps(state), author="t", **fields)
        return self.config.ApplyState(request, timeout=RPC_TIMEOUT_S)

    def versions(self) -> list[config_pb2.StateVersion]:
        listed = self.config.ListVersions(config_pb2.ListVersionsRequest(), timeout=RPC_TIMEOUT_S)
        return list(listed.versions)

    def live(self) -> config_pb2.StateVersion:
        return self.config.ExportState(config_pb2.ExportStateRequest(), timeout=RPC_TIMEOUT_S)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, state_env: dict[str, str]) -> Iterator[Fleet]:
    """The services on each state backend: SQLite files, then one PostgreSQL database."""
    state_dir = tmp_path_factory.mktemp("config-service")
    secret_file = state_dir / "enroll_secret"
    secret_file.write_text(SECRET + "\n")
    base = free_port_base()
    env = {"QUARRY_ENROLL_SECRET_FILE": str(secret_file), **state_env}
    started: dict[str, ServiceProcess] = {}
    try:
        for name in ("enroll", "distributed", "config"):
            started[name] = ServiceProcess(name, state_dir, base, env).start()
        running = Fleet(started)
        enroll_the_fleet(running)
        yield running
    finally:
        for process in started.values():
            process.stop()


def enroll_the_fleet(fleet: Fleet) -> None:
    prod = fleet.enroll.CreateSecret(enroll_pb2.CreateSecretRequest(name="prod", tags=["prod"]))
    approval = fleet.enroll.CreateSecret(
        enroll_pb2.CreateSecretRequest(name="approval", requires_approval=True)
    )
    fleet.enroll_host("linux-1", "ubuntu", secret=prod.value)
    fleet.enroll_host("linux-2", "debian")
    fleet.enroll_host("mac-1", "darwin")
    fleet.enroll_host("win-1", "windows")
    fleet.enroll_host("pending-1", "ubuntu", secret=approval.value)
    for index in range(EXTRA_LINUX_NODES):
        fleet.enroll_host(f"extra-{index}", "rhel")


def base_state(**extra_blocks: dict) -> dict:
    return {
        "blocks": {
            "base": {
                "targets": {"all": True},
                "config": {
                    "options": {"distributed_interval": 60},
                    "schedule": {"uptime": {"query": "SELECT * FROM uptime", "interval": 3600}},
                },
            },
            **extra_blocks,
        }
    }


def schedule_of(response: config_pb2.NodeConfigResponse) -> set[str]:
    return set(json.loads(response.config_json).get("schedule", {}))


# Targeting


def test_node_configs_follow_platform_tag_and_node_targets(fleet: Fleet) -> None:
    mac_id = fleet.node_ids["mac-1"]
    state = base_state(
        **{
            "linux": {
                "targets": {"platforms": ["linux"]},
                "config": {
                    "schedule": {"mounts": {"query": "SELECT * FROM mounts", "interval": 600}},
                    "packs": {
                        "mixed": {
                            "queries": {
                                "apt": {"query": "SELECT * FROM deb_packages", "platform": "linux"},
                                "apps": {"query": "SELECT * FROM apps", "platform": "darwin"},
                            }
                        }
                    },
                },
            },
            "prod": {
                "targets": {"tags": ["prod"]},
                "config": {"options": {"distributed_interval": 10}},
            },
            "web": {
                "targets": {"tags": ["web"]},
                "config": {"schedule": {"nginx": {"query": "SELECT 1", "interval": 60}}},
            },
            "the-mac": {
                "targets": {"nodes": [mac_id]},
                "config": {"schedule": {"apps": {"query": "SELECT * FROM apps", "interval": 60}}},
            },
        }
    )
    state["node_tags"] = {"linux-2": ["web"]}  # by host identifier
    applied = fleet.apply(state)
    assert applied.changed

    linux_1 = fleet.node_config("linux-1")
    assert list(linux_1.blocks) == ["base", "linux", "prod"]
    assert json.loads(linux_1.config_json)["options"]["distributed_interval"] == 10
    assert "options.distributed_interval: block 'prod' overrides 'base'" in linux_1.conflicts
    assert set(json.loads(linux_1.config_json)["packs"]["mixed"]["queries"]) == {"apt"}
    assert linux_1.group == "linux tags=prod"
    assert linux_1.version == applied.version.version and not linux_1.candidate

    linux_2 = fleet.node_config("linux-2")
    assert schedule_of(linux_2) == {"uptime", "mounts", "nginx"}
    assert list(linux_2.tags) == ["web"]

    mac = fleet.node_config("mac-1")
    assert schedule_of(mac) == {"uptime", "apps"}
    assert mac.group == f"node {mac_id}"
    windows = fleet.node_config("win-1")
    assert schedule_of(windows) == {"uptime"} and windows.group == "windows"

    # The hashes are osquery's: SHA-1 of the bytes, and SHA-1 of that hex digest.
    sha1 = hashlib.sha1(linux_1.config_json.encode()).hexdigest()
    assert linux_1.sha1 == sha1
    assert linux_1.osquery_info_config_hash == hashlib.sha1(sha1.encode()).hexdigest()
    # The apply warned about nothing and reported the clash.
    assert "options.distributed_interval: block 'prod' overrides 'base'" in applied.conflicts


def test_a_pending_node_gets_an_empty_config(fleet: Fleet) -> None:
    pending = fleet.node_config("pending-1")
    assert pending.pending
    assert pending.config_json == "{}"


def test_an_unknown_node_is_not_found(fleet: Fleet) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        fleet.config.NodeConfig(config_pb2.NodeConfigRequest(node_id="no-such-node"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


# Applying


def test_a_dry_run_shows_each_group_diff_and_stores_nothing(fleet: Fleet) -> None:
    fleet.apply(base_state())
    before = fleet.versions()
    new = base_state(
        linux={
            "targets": {"platforms": ["linux"]},
            "config": {"schedule": {"mounts": {"query": "SELECT * FROM mounts", "interval": 600}}},
        }
    )
    dry = fleet.apply(new, dry_run=True)
    assert dry.changed
    diffs = {diff.group: diff for diff in dry.diffs}
    assert set(diffs) == {"linux"}  # darwin, windows and the global group are unchanged
    assert diffs["linux"].nodes == 2 + EXTRA_LINUX_NODES
    assert '+    "mounts": {' in diffs["linux"].diff
    assert fleet.versions() == before
    assert fleet.live().version == before[0].version


def test_an_invalid_block_refuses_the_whole_apply(fleet: Fleet) -> None:
    before = fleet.versions()
    state = base_state(
        broken={
            "targets": {"tags": ["prod"]},
            "config": {"schedule": {"bad": {"query": "SELECT 1", "interval": 0}}},
        }
    )
    with pytest.raises(grpc.RpcError) as refused:
        fleet.apply(state)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "block 'broken'" in refused.value.details()
    assert "outside 1..604800" in refused.value.details()
    assert fleet.versions() == before


def test_a_config_too_big_for_one_group_present_refuses_the_apply(fleet: Fleet) -> None:
    # Each block alone is fine; only darwin nodes get both, and one is enrolled.
    before = fleet.versions()
    half = "a" * (600 * 1024)
    state = base_state(
        big={"targets": {"all": True}, "config": {"options": {"host_note": half}}},
        bigger={"targets": {"platforms": ["darwin"]}, "config": {"options": {"mac_note": half}}},
    )
    with pytest.raises(grpc.RpcError) as refused:
        fleet.apply(state)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "group darwin" in refused.value.details()
    assert "larger than" in refused.value.details()
    assert fleet.versions() == before


def test_unknown_keys_are_applied_with_a_warning(fleet: Fleet) -> None:
    applied = fleet.apply(
        base_state(odd={"targets": {"all": True}, "config": {"shcedule": {}}}), dry_run=True
    )
    assert any("'shcedule'" in warning for warning in applied.warnings)


# Versions


def test_versions_record_author_and_comment_and_rollback_makes_a_new_version(fleet: Fleet) -> None:
    first = fleet.apply(base_state(), comment="first").version
    second_state = base_state(
        extra={"targets": {"all": True}, "config": {"schedule": {"x": {"query": "SELECT 2"}}}}
    )
    second = fleet.apply(second_state, comment="second").version
    assert second.version > first.version
    assert (second.author, second.comment) == ("t", "second")
    again = fleet.apply(second_state)
    assert not again.changed and again.version.version == second.version

    rolled = fleet.config.Rollback(config_pb2.RollbackRequest(version=first.version, author="ops"))
    assert rolled.version == second.version + 1
    assert rolled.state_json == first.state_json and rolled.sha256 == first.sha256
    assert rolled.author == "ops" and f"version {first.version}" in rolled.comment
    newest = fleet.versions()[0]
    assert (newest.version, newest.author) == (rolled.version, "ops")
    assert fleet.live().version == rolled.version

    with pytest.raises(grpc.RpcError) as missing:
        fleet.config.Rollback(config_pb2.RollbackRequest(version=10_000))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_export_then_apply_changes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "blocks.yaml").write_text(
        "blocks:\n"
        "  base:\n"
        "    targets: {all: true}\n"
        "    config:\n"
        "      options: {distributed_interval: 30}\n"
        "      decorators: {interval: {3600: ['SELECT 1 AS one']}}\n"
    )
    (source / "labels.json").write_text(
        json.dumps({"labels": {"docker": {"query": LABEL_SQL, "interval": 300}}})
    )
    (source / "tags.yaml").write_text("node_tags:\n  linux-2: [web]\n")
    state = State.from_files([source])
    applied = fleet.config.ApplyState(
        config_pb2.ApplyStateRequest(state_json=state.to_json(), author="t")
    )
    assert applied.version.version == fleet.live().version

    exported = State.from_json(fleet.live().state_json)
    written = exported.export_files(tmp_path / "exported")
    assert sorted(path.name for path in written) == ["blocks.yaml", "labels.yaml", "node_tags.yaml"]
    reapplied = fleet.config.ApplyState(
        config_pb2.ApplyStateRequest(
            state_json=State.from_files([tmp_path / "exported"]).to_json(), author="t"
        )
    )
    assert not reapplied.changed
    assert reapplied.version.version == applied.version.version


def test_set_config_is_a_single_block_state(fleet: Fleet) -> None:
    config = {"options": {"distributed_interval": 45}, "schedule": {}}
    document = fleet.config.SetConfig(
        config_pb2.SetConfigRequest(config_json=json.dumps(config), author="t")
    )
    assert json.loads(document.config_json) == config
    assert document.sha256 == hashlib.sha256(document.config_json.encode()).hexdigest()
    live = fleet.live()
    assert live.version == document.version
    assert json.loads(live.state_json)["blocks"] == {
        "default": {"targets": {"all": True}, "config": config}
    }
    assert fleet.config.GetConfig(config_pb2.GetConfigRequest()).config_json == (
        document.config_json
    )


# Staged rollout


def candidates(fleet: Fleet) -> set[str]:
    return {name for name in fleet.active_names() if fleet.node_config(name).candidate}


def test_a_percent_rollout_reaches_the_nodes_of_low_buckets_until_promoted(fleet: Fleet) -> None:
    live = fleet.apply(base_state()).version
    canary = base_state(
        canary={"targets": {"all": True}, "config": {"schedule": {"c": {"query": "SELECT 3"}}}}
    )
    started = fleet.apply(canary, canary_percent=50)
    version = started.version.version
    expected = {
        name for name in fleet.active_names() if rollout_bucket(fleet.node_ids[name], version) < 50
    }
    assert 0 < len(expected) < len(fleet.active_names())  # the fleet really is split
    assert candidates(fleet) == expected
    for name in expected:
        assert "c" in schedule_of(fleet.node_config(name))
    assert fleet.live().version == live.version

    status = fleet.config.RolloutStatus(config_pb2.RolloutStatusRequest())
    assert (status.rollout.candidate_version, status.rollout.percent) == (version, 50)
    assert status.live_version == live.version
    ids = {node.node_id for node in status.candidate_nodes}
    assert ids == {fleet.node_ids[name] for name in expected}

    with pytest.raises(grpc.RpcError) as busy:
        fleet.apply(base_state())
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    promoted = fleet.config.PromoteRollout(config_pb2.RolloutRequest(author="t"))
    assert promoted.version == version == fleet.live().version
    assert candidates(fleet) == set()
    assert all("c" in schedule_of(fleet.node_config(n)) for n in fleet.active_names())


def test_a_count_rollout_picks_exactly_that_many_nodes_until_aborted(fleet: Fleet) -> None:
    live = fleet.apply(base_state()).version
    canary = base_state(
        canary={"targets": {"all": True}, "config": {"schedule": {"d": {"query": "SELECT 4"}}}}
    )
    started = fleet.apply(canary, canary_count=3)
    version = started.version.version
    ranked = sorted(
        fleet.active_names(),
        key=lambda n: (rollout_bucket(fleet.node_ids[n], version), fleet.node_ids[n]),
    )
    assert candidates(fleet) == set(ranked[:3])

    aborted = fleet.config.AbortRollout(config_pb2.RolloutRequest(author="t"))
    assert aborted.version == live.version == fleet.live().version
    assert candidates(fleet) == set()
    assert all("d" not in schedule_of(fleet.node_config(n)) for n in fleet.active_names())
    with pytest.raises(grpc.RpcError) as nothing:
        fleet.config.AbortRollout(config_pb2.RolloutRequest(author="t"))
    assert nothing.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_bad_canary_size_is_refused(fleet: Fleet) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        fleet.apply(base_state(), canary_percent=100)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1..99" in refused.value.details()


# Watching


def test_watch_sends_a_snapshot_then_each_change(fleet: Fleet) -> None:
    fleet.apply(base_state())
    watch = StreamReader(fleet.config.WatchConfig(config_pb2.WatchConfigRequest()))
    try:
        snapshot = watch.next()
        changed = base_state(
            more={"targets": {"all": True}, "config": {"schedule": {"m": {"query": "SELECT 5"}}}}
        )
        stored = fleet.apply(changed).version
        went_live = watch.next()
        started = fleet.apply(base_state(), canary_count=1).version
        rollout_started = watch.next()
        fleet.config.AbortRollout(config_pb2.RolloutRequest(author="t"))
        rollout_ended = watch.next()
    finally:
        watch.close()
    assert snapshot.snapshot and snapshot.HasField("live") and snapshot.HasField("rollout")
    assert snapshot.rollout.candidate_version == 0
    assert not went_live.snapshot and went_live.live.version == stored.version
    assert not went_live.HasField("rollout")
    assert rollout_started.rollout.candidate_version == started.version
    assert len(rollout_started.rollout.node_ids) == 1
    assert not rollout_started.HasField("live")
    assert rollout_ended.rollout.candidate_version == 0


# Fetches


def test_config_fetches_are_counted_per_version_and_hash(fleet: Fleet) -> None:
    live = fleet.apply(base_state()).version.version
    ids = [fleet.node_ids[name] for name in ("linux-1", "linux-2", "mac-1")]
    batch = config_pb2.ConfigFetchBatch(
        fetches=[
            config_pb2.ConfigFetch(node_id=ids[0], sha1="aaa", version=live, fetched_at=200),
            config_pb2.ConfigFetch(node_id=ids[1], sha1="aaa", version=live, fetched_at=200),
            config_pb2.ConfigFetch(node_id=ids[2], sha1="bbb", version=live - 1, fetched_at=200),
        ]
    )
    assert fleet.config.RecordConfigFetches(batch).recorded == 3
    # A late batch with an older fetch does not overwrite the newer one.
    late = config_pb2.ConfigFetchBatch(
        fetches=[config_pb2.ConfigFetch(node_id=ids[0], sha1="old", version=1, fetched_at=100)]
    )
    fleet.config.RecordConfigFetches(late)
    status = fleet.config.RolloutStatus(config_pb2.RolloutStatusRequest())
    running = {(count.version, count.sha1): count.nodes for count in status.running}
    assert running == {(live, "aaa"): 2, (live - 1, "bbb"): 1}
    assert status.live_version == live and status.rollout.candidate_version == 0

    canary = base_state(
        canary={"targets": {"all": True}, "config": {"schedule": {"e": {"query": "SELECT 6"}}}}
    )
    fleet.apply(canary, canary_count=2)
    try:
        status = fleet.config.RolloutStatus(config_pb2.RolloutStatusRequest())
        assert len(status.candidate_nodes) == 2
        chosen = {n.node_id for n in status.candidate_nodes}
        assert chosen == {fleet.node_ids[n] for n in candidates(fleet)}
    finally:
        fleet.config.AbortRollout(config_pb2.RolloutRequest(author="t"))


# Labels


def answer_label_campaigns(fleet: Fleet, rows_by_name: dict[str, int]) -> set[str]:
    """Answer every open campaign of the label query as the gateway would; the node ids
    the newest campaign targeted."""
    open_campaigns = fleet.distributed.ListCampaigns(distributed_pb2.ListCampaignsRequest())
    labels = [c for c in open_campaigns.campaigns if c.sql == LABEL_SQL]
    answers = []
    for campaign in labels:
        for name, rows in rows_by_name.items():
            node_id = fleet.node_ids[name]
            if node_id in campaign.node_ids:
                answers.append(
                    distributed_pb2.Answer(
                        campaign_id=campaign.campaign_id,
                        node_id=node_id,
                        host_identifier=name,
                        status=0 if rows >= 0 else 1,
                        message="" if rows >= 0 else "no such table",
                        row_count=max(rows, 0),
                        answered_at=1,
                    )
                )
    fleet.distributed.RecordActivity(distributed_pb2.ActivityBatch(answers=answers))
    newest = max(labels, key=lambda c: c.created_at, default=None)
    return set(newest.node_ids) if newest else set()


def labels_of(fleet: Fleet, name: str) -> list[str]:
    return list(fleet.node_config(name).labels)


def test_label_membership_follows_the_answers_and_survives_a_restart(fleet: Fleet) -> None:
    state = base_state(
        docker={
            "targets": {"labels": ["docker"]},
            "config": {"schedule": {"containers": {"query": "SELECT * FROM docker_containers"}}},
        }
    )
    state["labels"] = {"docker": {"query": LABEL_SQL, "interval": 2, "platforms": ["linux"]}}
    watch = StreamReader(fleet.config.WatchConfig(config_pb2.WatchConfigRequest()))
    try:
        watch.next()  # the snapshot
        fleet.apply(state)
        answers = {"linux-1": 1, "linux-2": 0}
        targeted = eventually(lambda: answer_label_campaigns(fleet, answers))
        assert eventually(
            lambda: answer_label_campaigns(fleet, answers) and labels_of(fleet, "linux-1")
        ) == ["docker"]
        events = watch.until(
            lambda e: any(m.node_id == fleet.node_ids["linux-1"] for m in e.memberships)
        )
    finally:
        watch.close()
    # Only linux nodes are asked: the label is for linux.
    linux = {fleet.node_ids[n] for n in fleet.active_names() if n.startswith(("linux", "extra"))}
    assert targeted == linux
    assert list(events[-1].memberships[0].labels) == ["docker"]
    assert labels_of(fleet, "linux-2") == []
    assert "containers" in schedule_of(fleet.node_config("linux-1"))
    assert "containers" not in schedule_of(fleet.node_config("linux-2"))

    # A failed answer keeps the membership; linux-2 joining shows the round was counted.
    answers = {"linux-1": -1, "linux-2": 3}
    eventually(lambda: answer_label_campaigns(fleet, answers) and labels_of(fleet, "linux-2"))
    assert labels_of(fleet, "linux-2") == ["docker"]
    assert labels_of(fleet, "linux-1") == ["docker"]

    # Memberships are stored: a restarted service still has them (nobody answers now,
    # and unanswered nodes keep their membership).
    config = fleet.processes["config"]
    assert config.stop() == 0, config.log_text()
    config.start()
    fleet.reconnect_config()
    assert labels_of(fleet, "linux-1") == ["docker"]
    snapshot = StreamReader(fleet.config.WatchConfig(config_pb2.WatchConfigRequest()))
    try:
        first = snapshot.next()
    finally:
        snapshot.close()
    members = {m.node_id: list(m.labels) for m in first.memberships}
    assert members[fleet.node_ids["linux-1"]] == ["docker"]

    # Without the label in the state, its memberships go.
    fleet.apply(base_state())
    assert eventually(lambda: labels_of(fleet, "linux-1") == [])


# Upgrades


def test_plain_config_versions_of_an_older_store_become_single_block_states(
    tmp_path: Path,
) -> None:
    old_configs = [
        {"options": {"distributed_interval": 20}, "schedule": {}},
        {"options": {"distributed_interval": 40}, "schedule": {}},
    ]
    database = sqlite3.connect(tmp_path / "config.sqlite3")
    database.execute(
        "CREATE TABLE config_versions (version INTEGER PRIMARY KEY, config_json TEXT NOT NULL,"
        " author TEXT NOT NULL, created_at INTEGER NOT NULL, sha256 TEXT NOT NULL)"
    )
    for version, config in enumerate(old_configs, start=1):
        text = json.dumps(config, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        database.execute(
            "INSERT INTO config_versions VALUES (?, ?, 'old', 100, ?)", (version, text, digest)
        )
    database.commit()
    database.close()

    service = ServiceProcess("config", tmp_path, free_port_base()).start()
    try:
        stub = config_pb2_grpc.ConfigServiceStub(sync_channel(service.addr))
        live = stub.GetConfig(config_pb2.GetConfigRequest())
        assert live.version == 2
        assert json.loads(live.config_json) == old_configs[1]
        versions = stub.ListVersions(config_pb2.ListVersionsRequest()).versions
        assert [v.version for v in versions] == [2, 1]
        assert State.from_json(versions[1].state_json) == State.single_block(old_configs[0])
        rolled = stub.Rollback(config_pb2.RollbackRequest(version=1, author="t"))
        assert rolled.version == 3
        assert (
            json.loads(stub.GetConfig(config_pb2.GetConfigRequest()).config_json)
            == (old_configs[0])
        )
    finally:
        assert service.stop() == 0, service.log_text()
