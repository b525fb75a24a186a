"""The enroll, config and distributed services as real processes, driven over real gRPC,
with their state in SQLite files and in PostgreSQL (the state_env fixture)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

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
from tests.service_processes import ServiceProcess

SECRET = "first-secret"
EVENT_WAIT_S = 15.0
RPC_TIMEOUT_S = 10.0
NodeEvent = enroll_pb2.NodeEvent
CampaignEvent = distributed_pb2.CampaignEvent
HostState = distributed_pb2.HostState


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, state_env: dict[str, str]
) -> Iterator[dict[str, ServiceProcess]]:
    state_dir = tmp_path_factory.mktemp("services")
    secret_file = state_dir / "enroll_secret"
    secret_file.write_text(SECRET + "\n")
    base = free_port_base()
    env = {"QUARRY_ENROLL_SECRET_FILE": str(secret_file), **state_env}
    started: dict[str, ServiceProcess] = {}
    try:
        for name in ("enroll", "config", "distributed"):
            started[name] = ServiceProcess(name, state_dir, base, env).start()
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="module")
def enroll(cluster: dict[str, ServiceProcess]) -> enroll_pb2_grpc.EnrollServiceStub:
    return enroll_pb2_grpc.EnrollServiceStub(sync_channel(cluster["enroll"].addr))


@pytest.fixture(scope="module")
def config(cluster: dict[str, ServiceProcess]) -> config_pb2_grpc.ConfigServiceStub:
    return config_pb2_grpc.ConfigServiceStub(sync_channel(cluster["config"].addr))


@pytest.fixture(scope="module")
def distributed(
    cluster: dict[str, ServiceProcess],
) -> distributed_pb2_grpc.DistributedServiceStub:
    return distributed_pb2_grpc.DistributedServiceStub(sync_channel(cluster["distributed"].addr))


class StreamReader:
    """Reads a server stream on a thread so the test can wait for events with a bound."""

    def __init__(self, call: grpc.Call) -> None:
        self._call = call
        self._events: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self._events.put(event)
        except grpc.RpcError:
            pass  # cancelled by close()

    def next(self) -> object:
        try:
            return self._events.get(timeout=EVENT_WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no stream event within {EVENT_WAIT_S} s") from None

    def until(self, done: Callable[[object], bool]) -> list[object]:
        """Every event up to and including the first for which done() is true."""
        seen = []
        while True:
            seen.append(self.next())
            if done(seen[-1]):
                return seen

    def close(self) -> None:
        self._call.cancel()


def host_details(hostname: str, hardware_uuid: str) -> str:
    return json.dumps(
        {
            "os_version": {"platform": "ubuntu", "version": "22.04"},
            "osquery_info": {"version": "5.12.1"},
            "system_info": {"hostname": hostname, "uuid": hardware_uuid},
        }
    )


def enroll_host(
    enroll: enroll_pb2_grpc.EnrollServiceStub, name: str, secret: str = SECRET
) -> enroll_pb2.EnrollResponse:
    return enroll.Enroll(
        enroll_pb2.EnrollRequest(
            enroll_secret=secret,
            host_identifier=name,
            platform_type="9",
            host_details_json=host_details(name, f"uuid-{name}"),
            remote_addr="127.0.0.1",
        ),
        timeout=RPC_TIMEOUT_S,
    )


def node_count(enroll: enroll_pb2_grpc.EnrollServiceStub) -> int:
    return len(enroll.ListNodes(enroll_pb2.ListNodesRequest(), timeout=RPC_TIMEOUT_S).nodes)


def is_snapshot_done(event: object) -> bool:
    # The two enums number SNAPSHOT_DONE differently (3 is ANSWERED for campaigns).
    if isinstance(event, CampaignEvent):
        return event.kind == CampaignEvent.SNAPSHOT_DONE
    return event.kind == NodeEvent.SNAPSHOT_DONE


# Enroll service


def test_enroll_with_the_right_secret_issues_a_working_key(enroll) -> None:
    response = enroll_host(enroll, "alpha")
    assert response.ok, response.reason
    assert len(response.node_key) >= 32
    node = enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=response.node_key))
    assert node.found and node.node_id == response.node.node_id
    assert (node.host_identifier, node.hostname, node.platform) == ("alpha", "alpha", "ubuntu")
    assert (node.osquery_version, node.platform_type) == ("5.12.1", "9")


@pytest.mark.parametrize("secret", ["wrong-secret", ""])
def test_a_wrong_or_empty_secret_is_refused_without_state_change(enroll, secret: str) -> None:
    before = node_count(enroll)
    response = enroll_host(enroll, "intruder", secret=secret)
    assert not response.ok
    assert response.reason == "invalid enroll secret"
    assert response.node_key == ""
    assert node_count(enroll) == before


def test_a_rotated_secret_file_applies_without_restart(cluster, enroll) -> None:
    secret_file = Path(cluster["enroll"].state_dir) / "enroll_secret"
    secret_file.write_text("  second-secret\n")
    try:
        assert not enroll_host(enroll, "rotated", secret=SECRET).ok
        assert enroll_host(enroll, "rotated", secret="second-secret").ok
    finally:
        secret_file.write_text(SECRET + "\n")


def test_garbage_host_details_and_missing_identifier_still_enroll(enroll) -> None:
    garbage = enroll.Enroll(
        enroll_pb2.EnrollRequest(
            enroll_secret=SECRET, host_identifier="garbled", host_details_json="{not json"
        )
    )
    assert garbage.ok and garbage.node.host_identifier == "garbled"
    nameless = enroll.Enroll(
        enroll_pb2.EnrollRequest(
            enroll_secret=SECRET, host_details_json=host_details("from-details", "uuid-fd")
        )
    )
    assert nameless.ok and nameless.node.host_identifier == "from-details"


def test_watch_nodes_sends_a_snapshot_then_live_enrollments(enroll) -> None:
    known = enroll_host(enroll, "before-watch")
    watch = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        snapshot = watch.until(is_snapshot_done)
        keys = {e.node.node_key for e in snapshot if e.kind == NodeEvent.UPSERT}
        assert known.node_key in keys
        fresh = enroll_host(enroll, "after-watch")
        event = watch.next()
        assert (event.kind, event.node.node_key) == (NodeEvent.UPSERT, fresh.node_key)
    finally:
        watch.close()


def test_reenrollment_replaces_the_key_of_the_same_node(enroll) -> None:
    first = enroll_host(enroll, "reenroller")
    watch = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        watch.until(is_snapshot_done)
        second = enroll_host(enroll, "reenroller")
        removed, added = watch.next(), watch.next()
    finally:
        watch.close()
    assert second.node.node_id == first.node.node_id
    assert second.node_key != first.node_key
    assert (removed.kind, removed.node.node_key) == (NodeEvent.REMOVE, first.node_key)
    assert (added.kind, added.node.node_key) == (NodeEvent.UPSERT, second.node_key)
    assert not enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=first.node_key)).found
    assert enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=second.node_key)).found
    nodes = enroll.ListNodes(enroll_pb2.ListNodesRequest()).nodes
    assert [n.host_identifier for n in nodes].count("reenroller") == 1


def test_revoking_a_node_removes_its_key(enroll) -> None:
    doomed = enroll_host(enroll, "doomed")
    watch = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        watch.until(is_snapshot_done)
        revoked = enroll.RevokeNode(enroll_pb2.NodeRef(node=doomed.node.node_id))
        event = watch.next()
    finally:
        watch.close()
    assert revoked.revoked and revoked.node_id == doomed.node.node_id
    assert (event.kind, event.node.node_key) == (NodeEvent.REMOVE, doomed.node_key)
    assert not enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=doomed.node_key)).found
    # A later snapshot no longer offers the revoked key.
    again = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        keys = {e.node.node_key for e in again.until(is_snapshot_done)}
    finally:
        again.close()
    assert doomed.node_key not in keys


def test_revoking_an_unknown_node_is_not_found(enroll) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        enroll.RevokeNode(enroll_pb2.NodeRef(node="no-such-node"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-node" in refused.value.details()


def test_get_node_with_an_unknown_key_is_not_found(enroll) -> None:
    assert not enroll.GetNode(enroll_pb2.GetNodeRequest(node_key="bogus")).found
    assert not enroll.GetNode(enroll_pb2.GetNodeRequest(node_key="")).found


def test_record_checkins_moves_last_seen_forward(enroll) -> None:
    node = enroll_host(enroll, "checker").node
    seen_at = node.last_seen_at + 1000
    batch = enroll_pb2.CheckinBatch(
        checkins=[
            enroll_pb2.Checkin(node_id=node.node_id, seen_at=seen_at),
            enroll_pb2.Checkin(node_id="unknown-node", seen_at=seen_at),
        ]
    )
    assert enroll.RecordCheckins(batch).recorded == 1
    after = enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=node.node_key))
    assert after.last_seen_at == seen_at


def test_check_ins_are_announced_once_per_interval_as_one_seen_event(
    tmp_path: Path, state_env: dict[str, str]
) -> None:
    """What quarry.hosts' last_seen follows (docs/adr/0020-hosts-table.md): the check-ins
    recorded since the last SEEN event, each node once with its latest time; none when no
    node checked in. On PostgreSQL the event goes through the change outbox."""
    secret_file = tmp_path / "enroll_secret"
    secret_file.write_text(SECRET + "\n")
    env = {"QUARRY_ENROLL_SECRET_FILE": str(secret_file), "QUARRY_NODE_SEEN_INTERVAL_S": "0.3"}
    process = ServiceProcess("enroll", tmp_path, free_port_base(), {**env, **state_env}).start()
    try:
        stub = enroll_pb2_grpc.EnrollServiceStub(sync_channel(process.addr))
        node = enroll_host(stub, "seen-by-the-minute").node
        assert node.os_version == "22.04"
        watch = StreamReader(stub.WatchNodes(enroll_pb2.WatchNodesRequest()))
        try:
            watch.until(is_snapshot_done)
            later = node.last_seen_at + 5
            checkins = [
                enroll_pb2.Checkin(node_id=node.node_id, seen_at=t) for t in (later, later - 1)
            ]
            stub.RecordCheckins(enroll_pb2.CheckinBatch(checkins=checkins), timeout=RPC_TIMEOUT_S)
            seen = watch.until(lambda e: e.kind == NodeEvent.SEEN)
            assert [(c.node_id, c.seen_at) for c in seen[-1].seen] == [(node.node_id, later)]
            # Nothing checked in since: no further SEEN event (other events may come).
            time.sleep(1.0)
            stub.RecordCheckins(
                enroll_pb2.CheckinBatch(checkins=checkins[:1]), timeout=RPC_TIMEOUT_S
            )
            following = watch.until(lambda e: e.kind == NodeEvent.SEEN)
            assert [e.kind for e in following] == [NodeEvent.SEEN]
        finally:
            watch.close()
    finally:
        process.stop()


# Config service

VALID_CONFIG = {
    "options": {"distributed_interval": 30},
    "schedule": {"uptime": {"query": "SELECT * FROM uptime;", "interval": 60}},
    "packs": {
        "base": {"queries": {"users": {"query": "SELECT * FROM users;", "interval": "3600"}}}
    },
}


def test_the_default_config_is_version_zero(config) -> None:
    live = config.GetConfig(config_pb2.GetConfigRequest())
    if live.version != 0:
        pytest.skip("another test already stored a config")
    assert json.loads(live.config_json)["options"]["distributed_interval"] == 60


def test_a_valid_config_is_stored_compactly_and_watched(config) -> None:
    watch = StreamReader(config.WatchConfig(config_pb2.WatchConfigRequest()))
    try:
        current = watch.next()
        stored = config.SetConfig(
            config_pb2.SetConfigRequest(config_json=json.dumps(VALID_CONFIG, indent=2), author="t")
        )
        delivered = watch.next()
    finally:
        watch.close()
    assert current.snapshot and not delivered.snapshot
    assert stored.version == current.live.version + 1
    # Stored compactly, keys sorted: the exact bytes osquery gets and hashes.
    assert json.loads(stored.config_json) == VALID_CONFIG
    assert " " not in stored.config_json.replace("SELECT * FROM ", "")
    # The stream carries the new state version: one block holding the config as set.
    assert delivered.live.version == stored.version
    assert delivered.live.sha256 != current.live.sha256
    assert json.loads(delivered.live.state_json)["blocks"]["default"]["config"] == VALID_CONFIG
    again = config.SetConfig(config_pb2.SetConfigRequest(config_json=json.dumps(VALID_CONFIG)))
    assert again.version == stored.version  # the same config again is not a new version


def nested(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


INVALID_CONFIGS = {
    "not json": ("{schedule", "not valid JSON"),
    "array root": ("[]", "must be a JSON object"),
    "too big": (json.dumps({"x": "a" * (1024 * 1024)}), "larger than"),
    "too deep": (nested(32), "nested 32 levels"),
    "error key": ('{"error":"x"}', "'error' is reserved"),
    "node_invalid key": ('{"node_invalid":false}', "'node_invalid' is reserved"),
    "options not object": ('{"options":[1]}', "'options' must be an object"),
    "query without sql": ('{"schedule":{"q":{"interval":60}}}', "non-empty string 'query'"),
    "interval too long": (
        '{"schedule":{"q":{"query":"SELECT 1","interval":604801}}}',
        "outside 1..604800",
    ),
    "interval zero": ('{"schedule":{"q":{"query":"SELECT 1","interval":0}}}', "outside"),
    "string pack": ('{"packs":{"p":"/etc/osquery/p.conf"}}', "string-valued packs"),
    "pack query without sql": ('{"packs":{"p":{"queries":{"q":{"query":5}}}}}', "'query'"),
    "reserved prefix": ('{"schedule":{"query.x":{"query":"SELECT 1"}}}', "reserved by osquery"),
    "reserved suffix": (
        '{"packs":{"p":{"queries":{"login_counter":{"query":"SELECT 1"}}}}}',
        "reserved by osquery",
    ),
    "NaN": ('{"options":{"x":NaN}}', "not valid JSON"),
}


@pytest.mark.parametrize("case", INVALID_CONFIGS, ids=list(INVALID_CONFIGS))
def test_an_invalid_config_is_refused_with_the_reason(config, case: str) -> None:
    config_json, reason = INVALID_CONFIGS[case]
    before = config.GetConfig(config_pb2.GetConfigRequest())
    with pytest.raises(grpc.RpcError) as refused:
        config.SetConfig(config_pb2.SetConfigRequest(config_json=config_json))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in refused.value.details()
    assert config.GetConfig(config_pb2.GetConfigRequest()).version == before.version


def test_a_config_just_below_the_depth_limit_is_accepted(config) -> None:
    assert config.SetConfig(config_pb2.SetConfigRequest(config_json=nested(31))).version > 0


def test_config_versions_survive_a_restart(tmp_path: Path, state_env: dict[str, str]) -> None:
    service = ServiceProcess("config", tmp_path, free_port_base(), state_env).start()
    try:
        stub = config_pb2_grpc.ConfigServiceStub(sync_channel(service.addr))
        stored = stub.SetConfig(config_pb2.SetConfigRequest(config_json=json.dumps(VALID_CONFIG)))
    finally:
        assert service.stop() == 0, service.log_text()
    service.start()
    try:
        stub = config_pb2_grpc.ConfigServiceStub(sync_channel(service.addr))
        live = stub.GetConfig(config_pb2.GetConfigRequest())
        assert (live.version, live.sha256) == (stored.version, stored.sha256)
    finally:
        service.stop()


# Distributed service


def start_query(distributed, sql: str = "SELECT 1;", **fields: object) -> distributed_pb2.Campaign:
    return distributed.StartQuery(distributed_pb2.StartQueryRequest(sql=sql, author="t", **fields))


def host_states(distributed, campaign_id: str) -> dict[str, distributed_pb2.HostState]:
    report = distributed.GetCampaign(distributed_pb2.GetCampaignRequest(campaign_id=campaign_id))
    assert report.found
    return {h.node_id: h for h in report.hosts}


def answer(
    campaign_id: str, node_id: str, status: int = 0, rows: int = 3
) -> distributed_pb2.Answer:
    return distributed_pb2.Answer(
        campaign_id=campaign_id,
        node_id=node_id,
        host_identifier="answerer",
        status=status,
        message="" if status == 0 else "no such table: nope",
        row_count=rows,
        stats=distributed_pb2.QueryStats(wall_time_ms=2, memory=4096),
        answered_at=1_700_000_000,
    )


def test_a_query_for_every_node_targets_the_enrolled_nodes(enroll, distributed) -> None:
    enroll_host(enroll, "target-me")
    nodes = enroll.ListNodes(enroll_pb2.ListNodesRequest()).nodes
    expected = {n.node_id: n.host_identifier for n in nodes if not n.revoked}
    campaign = start_query(distributed)
    assert campaign.target_all and campaign.campaign_id.startswith("q_")
    assert campaign.campaign_id.replace("_", "").isalnum()
    hosts = host_states(distributed, campaign.campaign_id)
    assert {n: h.host_identifier for n, h in hosts.items()} == expected
    assert {h.state for h in hosts.values()} == {HostState.TARGETED}


def test_a_query_for_named_nodes_targets_only_those(distributed) -> None:
    campaign = start_query(distributed, node_ids=["n1", "n2", "n1"])
    assert not campaign.target_all and list(campaign.node_ids) == ["n1", "n2"]
    assert set(host_states(distributed, campaign.campaign_id)) == {"n1", "n2"}


def test_an_empty_query_is_refused(distributed) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        start_query(distributed, sql="  ")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in refused.value.details()


def test_deliveries_and_answers_move_host_states(distributed) -> None:
    campaign_id = start_query(distributed, node_ids=["ok-node", "bad-node"]).campaign_id
    batch = distributed_pb2.ActivityBatch(
        deliveries=[
            distributed_pb2.Delivery(campaign_id=campaign_id, node_id=n, delivered_at=100)
            for n in ("ok-node", "bad-node", "late-node")
        ]
    )
    assert distributed.RecordActivity(batch).deliveries == 3
    hosts = host_states(distributed, campaign_id)
    assert {n: h.state for n, h in hosts.items()} == dict.fromkeys(
        ("ok-node", "bad-node", "late-node"), HostState.DELIVERED
    )
    answers = [answer(campaign_id, "ok-node"), answer(campaign_id, "bad-node", status=1, rows=0)]
    result = distributed.RecordActivity(distributed_pb2.ActivityBatch(answers=answers))
    assert result.answers == 2
    hosts = host_states(distributed, campaign_id)
    ok, bad = hosts["ok-node"], hosts["bad-node"]
    assert (ok.state, ok.row_count, ok.stats.memory, ok.delivered_at) == (
        HostState.ANSWERED,
        3,
        4096,
        100,
    )
    assert (bad.state, bad.status, bad.message) == (HostState.FAILED, 1, "no such table: nope")


def test_the_same_answer_twice_is_stored_once(distributed) -> None:
    campaign_id = start_query(distributed, node_ids=["twice"]).campaign_id
    first = distributed_pb2.ActivityBatch(answers=[answer(campaign_id, "twice", rows=5)])
    assert distributed.RecordActivity(first).answers == 1
    resent = distributed_pb2.ActivityBatch(answers=[answer(campaign_id, "twice", status=1)])
    assert distributed.RecordActivity(resent).answers == 0
    host = host_states(distributed, campaign_id)["twice"]
    assert (host.state, host.row_count) == (HostState.ANSWERED, 5)


def test_activity_for_an_unknown_campaign_is_ignored(distributed) -> None:
    batch = distributed_pb2.ActivityBatch(
        deliveries=[distributed_pb2.Delivery(campaign_id="q_nope", node_id="x", delivered_at=1)],
        answers=[answer("q_nope", "x")],
    )
    result = distributed.RecordActivity(batch)
    assert (result.deliveries, result.answers) == (0, 0)
    report = distributed.GetCampaign(distributed_pb2.GetCampaignRequest(campaign_id="q_nope"))
    assert not report.found


def record_answer_and_wait_for_its_relay(distributed, campaign_id: str, node_id: str) -> None:
    """RecordActivity, then wait until the service has sent that answer to its watchers.

    RecordActivity returns at commit, not once the change relay has published the answer
    (distributed_service/campaigns.py; docs/live-queries.md): on PostgreSQL a stream opened
    right after it may get the answer in its snapshot and again as a live event. Waiting for
    it on a stream of its own, opened before the write, means every stream opened later has
    it in its snapshot only. If the relay never sends it, this fails: that is a real fault.
    """
    watch = StreamReader(distributed.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()))
    try:
        watch.until(is_snapshot_done)
        batch = distributed_pb2.ActivityBatch(answers=[answer(campaign_id, node_id)])
        distributed.RecordActivity(batch)
        watch.until(
            lambda e: (
                (e.kind, e.campaign.campaign_id, e.node_id)
                == (CampaignEvent.ANSWERED, campaign_id, node_id)
            )
        )
    finally:
        watch.close()


def test_watch_campaigns_snapshot_has_open_campaigns_and_answers(distributed) -> None:
    campaign_id = start_query(distributed, node_ids=["a", "b"]).campaign_id
    record_answer_and_wait_for_its_relay(distributed, campaign_id, "a")
    watch = StreamReader(distributed.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()))
    try:
        snapshot = watch.until(is_snapshot_done)
        opened = {e.campaign.campaign_id for e in snapshot if e.kind == CampaignEvent.OPEN}
        answered = {
            (e.campaign.campaign_id, e.node_id)
            for e in snapshot
            if e.kind == CampaignEvent.ANSWERED
        }
        assert campaign_id in opened
        assert (campaign_id, "a") in answered and (campaign_id, "b") not in answered
        # Live: a new campaign, then an answer to it.
        live_id = start_query(distributed, node_ids=["c"]).campaign_id
        event = watch.next()
        assert (event.kind, event.campaign.campaign_id) == (CampaignEvent.OPEN, live_id)
        distributed.RecordActivity(distributed_pb2.ActivityBatch(answers=[answer(live_id, "c")]))
        event = watch.next()
        assert (event.kind, event.campaign.campaign_id, event.node_id) == (
            CampaignEvent.ANSWERED,
            live_id,
            "c",
        )
    finally:
        watch.close()


def test_a_cancelled_campaign_closes_and_leaves_the_snapshot(distributed) -> None:
    campaign_id = start_query(distributed, node_ids=["z"]).campaign_id
    watch = StreamReader(distributed.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()))
    try:
        watch.until(is_snapshot_done)
        cancelled = distributed.CancelCampaign(
            distributed_pb2.GetCampaignRequest(campaign_id=campaign_id)
        )
        event = watch.until(lambda e: e.kind == CampaignEvent.CLOSE)[-1]
    finally:
        watch.close()
    assert cancelled.cancelled
    assert event.campaign.campaign_id == campaign_id
    assert campaign_id not in open_in_new_snapshot(distributed)
    listed = distributed.ListCampaigns(distributed_pb2.ListCampaignsRequest())
    assert campaign_id not in {c.campaign_id for c in listed.campaigns}
    everything = distributed.ListCampaigns(
        distributed_pb2.ListCampaignsRequest(include_closed=True)
    )
    assert campaign_id in {c.campaign_id for c in everything.campaigns}


def test_cancelling_an_unknown_campaign_is_not_found(distributed) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        distributed.CancelCampaign(distributed_pb2.GetCampaignRequest(campaign_id="q_none"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_campaign_closes_when_its_ttl_runs_out(distributed) -> None:
    watch = StreamReader(distributed.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()))
    try:
        watch.until(is_snapshot_done)
        campaign_id = start_query(distributed, node_ids=["slow"], ttl_seconds=1).campaign_id
        closed = watch.until(
            lambda e: e.kind == CampaignEvent.CLOSE and e.campaign.campaign_id == campaign_id
        )
    finally:
        watch.close()
    assert closed[-1].campaign.expires_at > 0
    assert campaign_id not in open_in_new_snapshot(distributed)


def open_in_new_snapshot(distributed) -> set[str]:
    watch = StreamReader(distributed.WatchCampaigns(distributed_pb2.WatchCampaignsRequest()))
    try:
        snapshot = watch.until(is_snapshot_done)
    finally:
        watch.close()
    return {e.campaign.campaign_id for e in snapshot if e.kind == CampaignEvent.OPEN}
