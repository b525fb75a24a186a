"""Enroll secrets, node identity, clones and approval: the enroll service as a real process,
on SQLite and on PostgreSQL (the state_env fixture).

Each enrollment rule (docs/enrollment.md) is driven over real gRPC against `quarry serve
enroll`; a refused enrollment is checked to have changed nothing (the secret's count, the
node list).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enroll_service.store import MIGRATIONS, SERVICE_SCHEMA, NewNode, NodeStore
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.database import open_state_database
from quarry.state.service_database import SchemaComponent, ServiceSchema, migrate_service
from tests.free_ports import free_port_base
from tests.service_processes import ServiceProcess
from tests.test_services_grpc import StreamReader, is_snapshot_done

SHARED_SECRET = "bootstrap-secret"
RPC_TIMEOUT_S = 10.0
NodeEvent = enroll_pb2.NodeEvent
Stub = enroll_pb2_grpc.EnrollServiceStub


class EnrollService:
    """One enroll service process and a client for it."""

    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        secret_file = state_dir / "enroll_secret"
        state_dir.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(SHARED_SECRET + "\n")
        full_env = {"QUARRY_ENROLL_SECRET_FILE": str(secret_file), **(env or {})}
        self.process = ServiceProcess("enroll", state_dir, free_port_base(), full_env)
        self.stub: Stub | None = None

    def __enter__(self) -> EnrollService:
        self.process.start()
        self.stub = enroll_pb2_grpc.EnrollServiceStub(sync_channel(self.process.addr))
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()

    def metric(self, name: str, **labels: str) -> float:
        settings = self.process.settings
        url = f"http://{settings.bind_host}:{settings.metrics_port('enroll')}/metrics"
        text = httpx.get(url, timeout=RPC_TIMEOUT_S).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise AssertionError(f"metric {name}{labels} not exported")


def start(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[EnrollService]:
    with EnrollService(tmp_path_factory.mktemp("enroll"), env) as service:
        yield service


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, state_env: dict[str, str]
) -> Iterator[EnrollService]:
    """The service on each state backend: SQLite, then PostgreSQL."""
    yield from start(tmp_path_factory, state_env)


@pytest.fixture(scope="module")
def enroll(service: EnrollService) -> Stub:
    return service.stub


# Helpers


def host_details(hostname: str, hardware_uuid: str = "", serial: str = "") -> str:
    system_info = {"hostname": hostname, "uuid": hardware_uuid, "hardware_serial": serial}
    return json.dumps(
        {
            "os_version": {"platform": "ubuntu", "version": "22.04"},
            "osquery_info": {"version": "5.12.1"},
            "system_info": system_info,
        }
    )


def enroll_request(
    name: str,
    secret: str = SHARED_SECRET,
    hardware_uuid: str | None = None,
    serial: str = "",
    certificate: enroll_pb2.ClientCertificate | None = None,
) -> enroll_pb2.EnrollRequest:
    uuid = f"uuid-{name}" if hardware_uuid is None else hardware_uuid
    return enroll_pb2.EnrollRequest(
        enroll_secret=secret,
        host_identifier=name,
        platform_type="9",
        host_details_json=host_details(name, uuid, serial),
        remote_addr="127.0.0.1",
        client_certificate=certificate,
    )


def enroll_host(enroll: Stub, name: str, **kwargs: object) -> enroll_pb2.EnrollResponse:
    return enroll.Enroll(enroll_request(name, **kwargs), timeout=RPC_TIMEOUT_S)


def enrolled(enroll: Stub, name: str, **kwargs: object) -> enroll_pb2.EnrollResponse:
    response = enroll_host(enroll, name, **kwargs)
    assert response.ok, response.reason
    return response


def create_secret(enroll: Stub, name: str, **policy: object) -> enroll_pb2.CreatedSecret:
    request = enroll_pb2.CreateSecretRequest(name=name, **policy)
    return enroll.CreateSecret(request, timeout=RPC_TIMEOUT_S)


def secrets_by_id(enroll: Stub) -> dict[str, enroll_pb2.EnrollSecret]:
    listed = enroll.ListSecrets(enroll_pb2.ListSecretsRequest(include_inactive=True))
    return {secret.secret_id: secret for secret in listed.secrets}


def nodes(enroll: Stub, **filters: object) -> list[enroll_pb2.Node]:
    return list(enroll.ListNodes(enroll_pb2.ListNodesRequest(**filters)).nodes)


def node_keys(enroll: Stub) -> list[tuple[str, str, bool]]:
    return sorted((n.node_id, n.node_key, n.revoked) for n in nodes(enroll))


def is_valid(enroll: Stub, node_key: str) -> bool:
    return enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=node_key)).found


def sleep_past(moment: int) -> None:
    """Wait until the service's clock (whole seconds) has reached `moment`."""
    time.sleep(max(0.0, moment - time.time()) + 0.05)


def assert_refused(
    service: EnrollService,
    reason: str,
    outcome: str,
    name: str,
    secret: str = SHARED_SECRET,
    **kwargs: object,
) -> enroll_pb2.EnrollResponse:
    """The enrollment is refused with `reason` (its start) and changes no secret and no node."""
    enroll = service.stub
    secrets_before, nodes_before = secrets_by_id(enroll), node_keys(enroll)
    refusals_before = service.metric("quarry_enroll_enrollments_total", outcome=outcome)
    response = enroll_host(enroll, name, secret=secret, **kwargs)
    assert (response.ok, response.node_key) == (False, "")
    assert response.reason.startswith(reason), response.reason
    assert secrets_by_id(enroll) == secrets_before
    assert node_keys(enroll) == nodes_before
    assert service.metric("quarry_enroll_enrollments_total", outcome=outcome) == (
        refusals_before + 1
    )
    assert reason in service.process.log_text()
    return response


# Enroll secrets


def test_a_created_secret_is_shown_once_and_gives_nodes_its_tags(service, enroll) -> None:
    created = create_secret(enroll, "web-prod", tags=["web", "prod"], group="dmz")
    assert len(created.value) >= 40 and created.secret.state == "active"
    node = enrolled(enroll, "web-1", secret=created.value).node
    assert (list(node.tags), node.group, node.secret_name) == (["web", "prod"], "dmz", "web-prod")
    listed = secrets_by_id(enroll)[created.secret.secret_id]
    assert (listed.enrollments, listed.state, listed.name) == (1, "active", "web-prod")
    assert listed.last_used_at >= node.enrolled_at
    # Only the hash is stored: the value appears neither in a listing nor on disk.
    assert created.value not in str(enroll.ListSecrets(enroll_pb2.ListSecretsRequest()))
    state_dir = service.process.state_dir
    for stored in state_dir.glob("enroll.sqlite3*"):
        assert created.value.encode() not in stored.read_bytes()


def test_the_shared_secret_is_the_default_secret(enroll) -> None:
    [default] = [s for s in secrets_by_id(enroll).values() if s.name == "default"]
    node = enrolled(enroll, "plain-host").node
    assert node.secret_name == "default" and list(node.tags) == []
    assert secrets_by_id(enroll)[default.secret_id].enrollments == default.enrollments + 1


def test_a_wrong_secret_is_refused(service) -> None:
    assert_refused(service, "invalid enroll secret", "invalid_secret", "intruder", "nope")
    assert_refused(service, "invalid enroll secret", "invalid_secret", "intruder", "")


def test_a_revoked_secret_is_refused(service, enroll) -> None:
    first = create_secret(enroll, "to-revoke")
    second = create_secret(enroll, "to-revoke")
    enrolled(enroll, "before-revoke", secret=first.value)
    # By name: every secret of that name.
    revoked = enroll.RevokeSecret(enroll_pb2.SecretRef(secret="to-revoke"))
    assert revoked.state == "revoked" and revoked.revoked_at > 0
    for created in (first, second):
        assert_refused(
            service, "enroll secret revoked", "secret_revoked", "after-revoke", created.value
        )
    listed = {s.secret_id for s in enroll.ListSecrets(enroll_pb2.ListSecretsRequest()).secrets}
    assert first.secret.secret_id not in listed
    assert secrets_by_id(enroll)[first.secret.secret_id].state == "revoked"


def test_a_secret_revoked_by_id_leaves_its_namesakes(enroll) -> None:
    first = create_secret(enroll, "twins")
    second = create_secret(enroll, "twins")
    enroll.RevokeSecret(enroll_pb2.SecretRef(secret=first.secret.secret_id))
    assert not enroll_host(enroll, "twin-a", secret=first.value).ok
    assert enroll_host(enroll, "twin-b", secret=second.value).ok


def test_an_expired_secret_is_refused(service, enroll) -> None:
    expires_at = int(time.time()) + 2
    created = create_secret(enroll, "short-lived", expires_at=expires_at)
    enrolled(enroll, "early-bird", secret=created.value)
    sleep_past(expires_at)
    assert_refused(service, "enroll secret expired", "secret_expired", "latecomer", created.value)
    assert secrets_by_id(enroll)[created.secret.secret_id].state == "expired"


def test_a_secret_with_a_quota_is_exhausted(service, enroll) -> None:
    created = create_secret(enroll, "quota-2", max_enrollments=2)
    enrolled(enroll, "quota-a", secret=created.value)
    enrolled(enroll, "quota-b", secret=created.value)
    assert_refused(service, "enroll secret exhausted", "secret_exhausted", "quota-c", created.value)
    # The quota counts machines: one the secret counted re-enrolls without using more.
    enrolled(enroll, "quota-a", secret=created.value)
    counted = secrets_by_id(enroll)[created.secret.secret_id]
    assert (counted.state, counted.enrollments) == ("exhausted", 2)


def test_a_one_time_secret_enrolls_once(service, enroll) -> None:
    created = create_secret(enroll, "single-use", one_time=True)
    enrolled(enroll, "once", secret=created.value)
    assert_refused(service, "enroll secret exhausted", "secret_exhausted", "twice", created.value)


def test_rotation_keeps_both_secrets_valid_for_the_grace_period(service, enroll) -> None:
    old = create_secret(enroll, "rotating", tags=["fleet"], requires_approval=False)
    rotated = enroll.RotateSecret(
        enroll_pb2.RotateSecretRequest(secret="rotating", grace_seconds=2)
    )
    assert rotated.value and rotated.value != old.value
    assert (rotated.secret.name, list(rotated.secret.tags)) == ("rotating", ["fleet"])
    assert rotated.secret.secret_id != old.secret.secret_id
    old_after = secrets_by_id(enroll)[old.secret.secret_id]
    assert 0 < old_after.expires_at <= int(time.time()) + 2
    assert enrolled(enroll, "during-grace-old", secret=old.value).node.secret_name == "rotating"
    assert enrolled(enroll, "during-grace-new", secret=rotated.value).node.tags == ["fleet"]
    sleep_past(old_after.expires_at)
    assert_refused(service, "enroll secret expired", "secret_expired", "after-grace", old.value)
    enrolled(enroll, "after-grace", secret=rotated.value)


def test_bad_secret_requests_get_clear_errors(enroll) -> None:
    cases = [
        (enroll_pb2.CreateSecretRequest(name=""), grpc.StatusCode.INVALID_ARGUMENT, "name"),
        (
            enroll_pb2.CreateSecretRequest(name="default"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reserved",
        ),
        (
            enroll_pb2.CreateSecretRequest(name="past", expires_at=1000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "future",
        ),
        (
            enroll_pb2.CreateSecretRequest(name="neg", max_enrollments=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_enrollments",
        ),
    ]
    for request, code, words in cases:
        with pytest.raises(grpc.RpcError) as refused:
            enroll.CreateSecret(request)
        assert refused.value.code() == code and words in refused.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        enroll.RevokeSecret(enroll_pb2.SecretRef(secret="no-such-secret"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as builtin:
        enroll.RotateSecret(enroll_pb2.RotateSecretRequest(secret="default", grace_seconds=5))
    assert builtin.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Still serving.
    assert create_secret(enroll, "after-errors").value


def test_the_secrets_gauge_counts_by_state(service, enroll) -> None:
    created = create_secret(enroll, "gauge-me")
    states = [s.state for s in secrets_by_id(enroll).values()]
    assert service.metric("quarry_enroll_secrets", state="active") == states.count("active")
    enroll.RevokeSecret(enroll_pb2.SecretRef(secret=created.secret.secret_id))
    states = [s.state for s in secrets_by_id(enroll).values()]
    assert service.metric("quarry_enroll_secrets", state="revoked") == states.count("revoked")


# Nodes


# --- storms: many enrollments at once, written in groups (docs/enrollment.md) -------------


def storm(enroll: Stub, singles: list[enroll_pb2.EnrollRequest], *groups: list) -> list:
    """Every single request in an Enroll call of its own and every group in one EnrollMany
    call, all in flight at once; the answers, singles first, then each group's in order."""

    def call(batch: list[enroll_pb2.EnrollRequest] | enroll_pb2.EnrollRequest) -> list:
        if isinstance(batch, list):
            request = enroll_pb2.EnrollManyRequest(requests=batch)
            return list(enroll.EnrollMany(request, timeout=RPC_TIMEOUT_S).responses)
        return [enroll.Enroll(batch, timeout=RPC_TIMEOUT_S)]

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(call, [*singles, *groups]))
    return [answer for batch in answers for answer in batch]


def test_a_storm_of_concurrent_enrollments_gets_distinct_working_keys(enroll) -> None:
    names = [f"storm-{i}" for i in range(120)]
    requests = [enroll_request(name) for name in names]
    answers = storm(enroll, requests[:60], requests[60:90], requests[90:])
    assert [a.ok for a in answers] == [True] * 120, [a.reason for a in answers if not a.ok]
    assert [a.node.host_identifier for a in answers] == names
    assert len({a.node_key for a in answers}) == 120
    assert len({a.node.node_id for a in answers}) == 120
    assert all(is_valid(enroll, a.node_key) for a in answers)
    listed = {n.host_identifier for n in nodes(enroll) if not n.revoked}
    assert set(names) <= listed


def test_a_group_is_answered_in_order_and_sees_its_own_changes(service, enroll) -> None:
    groups_before = service.metric("quarry_enroll_group_size_enrollments_count")
    sizes_before = service.metric("quarry_enroll_group_size_enrollments_sum")
    watch = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        watch.until(is_snapshot_done)
        group = [
            enroll_request("group-a"),
            enroll_request("group-bad", secret="not-the-secret"),
            enroll_request("group-b"),
            enroll_request("group-a"),  # the same machine again, in the same group
        ]
        answers = list(enroll.EnrollMany(enroll_pb2.EnrollManyRequest(requests=group)).responses)
        event = watch.next()
    finally:
        watch.close()
    first, bad, other, again = answers
    assert (first.ok, bad.ok, other.ok, again.ok) == (True, False, True, True)
    assert bad.reason == "invalid enroll secret"
    assert again.node.node_id == first.node.node_id and again.node_key != first.node_key
    assert not is_valid(enroll, first.node_key) and is_valid(enroll, again.node_key)
    # One change event for the group: the replaced key's REMOVE before the new key.
    assert event.kind == NodeEvent.GROUP
    assert [(e.kind, e.node.node_key) for e in event.group] == [
        (NodeEvent.UPSERT, first.node_key),
        (NodeEvent.UPSERT, other.node_key),
        (NodeEvent.REMOVE, first.node_key),
        (NodeEvent.UPSERT, again.node_key),
    ]
    # The three admitted enrollments were written as one group.
    assert service.metric("quarry_enroll_group_size_enrollments_count") == groups_before + 1
    assert service.metric("quarry_enroll_group_size_enrollments_sum") == sizes_before + 3


def test_a_quota_holds_under_a_concurrent_storm(enroll) -> None:
    created = create_secret(enroll, "storm-quota", max_enrollments=7)
    requests = [enroll_request(f"quota-storm-{i}", secret=created.value) for i in range(50)]
    answers = storm(enroll, requests[:30], requests[30:40], requests[40:])
    assert sum(a.ok for a in answers) == 7
    assert {a.reason for a in answers if not a.ok} == {"enroll secret exhausted"}
    assert secrets_by_id(enroll)[created.secret.secret_id].enrollments == 7
    assert len(nodes(enroll, secret_name="storm-quota")) == 7


def test_the_cooldown_counts_the_enrollments_earlier_in_the_same_group(enroll) -> None:
    # The default policy: from the third enrollment within the window, wait 60 s.
    group = [enroll_request("cooling-down") for _ in range(4)]
    answers = enroll.EnrollMany(enroll_pb2.EnrollManyRequest(requests=group)).responses
    assert [a.ok for a in answers] == [True, True, True, False]
    assert answers[3].reason.startswith("re-enrolling too often")
    assert is_valid(enroll, answers[2].node_key)


def test_a_one_time_secret_enrolls_once_in_a_group(enroll) -> None:
    created = create_secret(enroll, "storm-once", one_time=True)
    group = [enroll_request(f"once-{i}", secret=created.value) for i in range(5)]
    answers = enroll.EnrollMany(enroll_pb2.EnrollManyRequest(requests=group)).responses
    assert [a.ok for a in answers] == [True, False, False, False, False]
    assert secrets_by_id(enroll)[created.secret.secret_id].enrollments == 1


def test_reenrollment_keeps_the_node_and_invalidates_the_old_key(service, enroll) -> None:
    first = enrolled(enroll, "machine-a", hardware_uuid="uuid-shared-machine")
    reenrolled_before = service.metric("quarry_enroll_enrollments_total", outcome="reenrolled")
    # Renamed host, same hardware UUID: the same machine.
    second = enrolled(enroll, "machine-a-renamed", hardware_uuid="uuid-shared-machine")
    assert second.node.node_id == first.node.node_id
    assert second.node.identity == "uuid-shared-machine"
    assert second.node.first_enrolled_at == first.node.first_enrolled_at
    assert second.node.host_identifier == "machine-a-renamed"
    assert not is_valid(enroll, first.node_key) and is_valid(enroll, second.node_key)
    assert [n.identity for n in nodes(enroll)].count("uuid-shared-machine") == 1
    assert service.metric("quarry_enroll_enrollments_total", outcome="reenrolled") == (
        reenrolled_before + 1
    )


def test_a_host_without_a_hardware_uuid_is_known_by_its_host_identifier(enroll) -> None:
    node = enrolled(enroll, "no-uuid-host", hardware_uuid="").node
    assert node.identity == "no-uuid-host"


def test_a_revoked_node_may_not_enroll_again_unless_its_secret_allows(service, enroll) -> None:
    node = enrolled(enroll, "banned-host").node
    enroll.RevokeNode(enroll_pb2.NodeRef(node=node.node_id))
    assert_refused(
        service, "node revoked; re-enrollment not allowed", "node_revoked", "banned-host"
    )
    forgiving = create_secret(enroll, "second-chance", allows_reenrollment_after_revocation=True)
    back = enrolled(enroll, "banned-host", secret=forgiving.value)
    assert back.node.node_id == node.node_id and not back.node.revoked
    assert is_valid(enroll, back.node_key)


def test_approval_flow_pending_then_active(service, enroll) -> None:
    gated = create_secret(enroll, "gated", requires_approval=True, tags=["gated"])
    watch = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        watch.until(is_snapshot_done)
        response = enrolled(enroll, "awaiting", secret=gated.value)
        pending_event = watch.next()
        approved = enroll.ApproveNode(enroll_pb2.NodeRef(node="awaiting"))
        approved_event = watch.next()
    finally:
        watch.close()
    assert response.node.pending and response.node_key
    assert (pending_event.kind, pending_event.node.node_key) == (
        NodeEvent.UPSERT,
        response.node_key,
    )
    assert pending_event.node.pending
    assert (approved_event.kind, approved_event.node.pending) == (NodeEvent.UPSERT, False)
    assert approved_event.node.node_key == response.node_key
    assert not approved.pending
    assert [n.node_id for n in nodes(enroll, status="active", tag="gated")] == [approved.node_id]
    # Approved once is approved: re-enrolling with the same secret is not pending again.
    assert not enrolled(enroll, "awaiting", secret=gated.value).node.pending
    assert service.metric("quarry_enroll_enrollments_total", outcome="pending") >= 1


def test_a_pending_node_is_served_by_get_node_and_listed_as_pending(enroll) -> None:
    gated = create_secret(enroll, "gated-list", requires_approval=True)
    response = enrolled(enroll, "in-queue", secret=gated.value)
    looked_up = enroll.GetNode(enroll_pb2.GetNodeRequest(node_key=response.node_key))
    assert looked_up.found and looked_up.pending
    assert response.node.node_id in [n.node_id for n in nodes(enroll, status="pending")]
    assert response.node.node_id not in [n.node_id for n in nodes(enroll, status="active")]


def test_a_rejected_node_loses_its_key_and_may_not_enroll_again(service, enroll) -> None:
    gated = create_secret(enroll, "gated-reject", requires_approval=True)
    response = enrolled(enroll, "unwanted", secret=gated.value)
    watch = StreamReader(enroll.WatchNodes(enroll_pb2.WatchNodesRequest()))
    try:
        watch.until(is_snapshot_done)
        rejected = enroll.RejectNode(enroll_pb2.NodeRef(node=response.node.node_id))
        event = watch.next()
    finally:
        watch.close()
    assert rejected.revoked
    assert (event.kind, event.node.node_key) == (NodeEvent.REMOVE, response.node_key)
    assert not is_valid(enroll, response.node_key)
    assert response.node.node_id in [n.node_id for n in nodes(enroll, status="revoked")]
    assert_refused(
        service,
        "node revoked; re-enrollment not allowed",
        "node_revoked",
        "unwanted",
        gated.value,
    )


def test_only_a_pending_node_can_be_rejected(enroll) -> None:
    active = enrolled(enroll, "already-active").node
    with pytest.raises(grpc.RpcError) as refused:
        enroll.RejectNode(enroll_pb2.NodeRef(node=active.node_id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert is_valid(enroll, active.node_key)


def test_list_nodes_filters(enroll) -> None:
    tagged = create_secret(enroll, "filter-secret", tags=["filter-tag"])
    node = enrolled(enroll, "filtered-host", secret=tagged.value).node
    assert [n.node_id for n in nodes(enroll, tag="filter-tag")] == [node.node_id]
    assert [n.node_id for n in nodes(enroll, secret_name="filter-secret")] == [node.node_id]
    assert node.node_id in [n.node_id for n in nodes(enroll, platform="ubuntu")]
    assert nodes(enroll, platform="windows") == []
    with pytest.raises(grpc.RpcError) as refused:
        nodes(enroll, status="sleeping")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sleeping" in refused.value.details()


def test_show_node_gives_host_details_and_the_client_certificate(enroll) -> None:
    certificate = enroll_pb2.ClientCertificate(
        subject="CN=shown-host", subject_alt_names=["shown.example"], sha256_fingerprint="ab" * 32
    )
    node = enrolled(enroll, "shown-host", certificate=certificate).node
    details = enroll.ShowNode(enroll_pb2.NodeRef(node=node.node_key))
    assert details.node.node_id == node.node_id
    assert json.loads(details.host_details_json)["system_info"]["hostname"] == "shown-host"
    assert details.recent_enrollments == 1 and not details.suspected_clone
    assert details.client_certificate == certificate
    # Without enroll_client_cert_identity the certificate is not the identity.
    assert details.node.identity == "uuid-shown-host"
    with pytest.raises(grpc.RpcError) as unknown:
        enroll.ShowNode(enroll_pb2.NodeRef(node="no-such-node"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


# Clones and cooldown

CLONE_COOLDOWN_S = 2


@pytest.fixture(scope="module")
def clone_service(
    tmp_path_factory: pytest.TempPathFactory, state_env: dict[str, str]
) -> Iterator[EnrollService]:
    yield from start(
        tmp_path_factory,
        {
            **state_env,
            "QUARRY_ENROLL_CLONE_THRESHOLD": "2",
            "QUARRY_ENROLL_CLONE_WINDOW_S": "600",
            "QUARRY_ENROLL_COOLDOWN_S": str(CLONE_COOLDOWN_S),
        },
    )


def use_key(enroll: Stub, node: enroll_pb2.Node) -> None:
    """A check-in after the key was issued, as the gateway reports it."""
    checkin = enroll_pb2.Checkin(node_id=node.node_id, seen_at=node.enrolled_at + 1)
    enroll.RecordCheckins(enroll_pb2.CheckinBatch(checkins=[checkin]))


def test_two_live_machines_sharing_an_identity_are_a_suspected_clone(clone_service) -> None:
    enroll = clone_service.stub
    real = enrolled(enroll, "real-host", hardware_uuid="uuid-cloned-image")
    use_key(enroll, real.node)
    clone = enrolled(enroll, "clone-host", hardware_uuid="uuid-cloned-image")
    use_key(enroll, clone.node)
    assert clone.node.node_id == real.node.node_id

    details = enroll.ShowNode(enroll_pb2.NodeRef(node=clone.node.node_id))
    assert (details.recent_enrollments, details.suspected_clone) == (2, True)
    suspects = nodes(enroll, suspected_clones=True)
    assert [n.node_id for n in suspects] == [clone.node.node_id]
    assert clone_service.metric("quarry_enroll_suspected_clones") == 1

    # The storm is slowed; the key in force keeps working.
    refused = assert_refused(
        clone_service,
        "re-enrolling too often; retry in ",
        "cooldown",
        "real-host",
        hardware_uuid="uuid-cloned-image",
    )
    wait_s = int(refused.reason.split()[-2])
    assert 0 < wait_s <= CLONE_COOLDOWN_S
    assert is_valid(enroll, clone.node_key)
    # After the cooldown the identity may enroll again.
    sleep_past(clone.node.enrolled_at + CLONE_COOLDOWN_S)
    assert enrolled(enroll, "real-host", hardware_uuid="uuid-cloned-image").node.node_id == (
        real.node.node_id
    )


def test_reenrolling_without_using_the_key_is_not_a_clone_but_cools_down(clone_service) -> None:
    enroll = clone_service.stub
    enrolled(enroll, "reinstall")
    second = enrolled(enroll, "reinstall")
    details = enroll.ShowNode(enroll_pb2.NodeRef(node="reinstall"))
    assert (details.recent_enrollments, details.suspected_clone) == (2, False)
    assert second.node.node_id not in [n.node_id for n in nodes(enroll, suspected_clones=True)]
    third = enroll_host(enroll, "reinstall")
    assert not third.ok and third.reason.startswith("re-enrolling too often; retry in ")
    assert is_valid(enroll, second.node_key)


# Identity sources


@pytest.fixture(scope="module")
def serial_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrollService]:
    yield from start(tmp_path_factory, {"QUARRY_NODE_IDENTITY": "hardware_serial"})


def test_hardware_serial_identity(serial_service) -> None:
    enroll = serial_service.stub
    first = enrolled(enroll, "serial-a", hardware_uuid="uuid-1", serial="SN-42").node
    # A new mainboard UUID, same serial: the same machine.
    second = enrolled(enroll, "serial-b", hardware_uuid="uuid-2", serial="SN-42").node
    assert (first.identity, first.hardware_serial) == ("SN-42", "SN-42")
    assert second.node_id == first.node_id
    # Same UUID, another serial: another machine.
    other = enrolled(enroll, "serial-c", hardware_uuid="uuid-1", serial="SN-43").node
    assert other.node_id != first.node_id
    # No serial: the host identifier.
    bare = enrolled(enroll, "serial-less", hardware_uuid="uuid-1").node
    assert bare.identity == "serial-less"


@pytest.fixture(scope="module")
def cert_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnrollService]:
    yield from start(
        tmp_path_factory,
        {
            "QUARRY_ENROLL_CLIENT_CERT_IDENTITY": "fingerprint",
            "QUARRY_ENROLL_SECRET_OPTIONAL_WITH_CLIENT_CERT": "true",
        },
    )


def certificate_of(name: str, fingerprint: str) -> enroll_pb2.ClientCertificate:
    return enroll_pb2.ClientCertificate(
        subject=f"CN={name}", subject_alt_names=[f"{name}.example"], sha256_fingerprint=fingerprint
    )


def test_a_certificate_is_the_identity_and_replaces_the_secret(cert_service) -> None:
    enroll = cert_service.stub
    certificate = certificate_of("cert-host", "cd" * 32)
    node = enrolled(enroll, "cert-host", secret="", certificate=certificate).node
    assert (node.identity, node.secret_name) == ("cert:" + "cd" * 32, "client-certificate")
    # Another host name and UUID with the same certificate: the same node.
    again = enrolled(
        enroll, "cert-host-2", secret="", hardware_uuid="uuid-x", certificate=certificate
    ).node
    assert again.node_id == node.node_id
    details = enroll.ShowNode(enroll_pb2.NodeRef(node=node.node_id))
    assert details.client_certificate == certificate
    # With the shared secret too, the certificate still names the node.
    with_secret = enrolled(enroll, "cert-host-3", certificate=certificate_of("c3", "ef" * 32))
    assert (with_secret.node.identity, with_secret.node.secret_name) == (
        "cert:" + "ef" * 32,
        "default",
    )


def test_without_a_certificate_a_secret_is_still_needed(cert_service) -> None:
    assert_refused(cert_service, "invalid enroll secret", "invalid_secret", "no-cert", "")
    assert_refused(
        cert_service,
        "invalid enroll secret",
        "invalid_secret",
        "bad-secret",
        "wrong",
        certificate=certificate_of("bad-secret", "01" * 32),
    )


def test_without_the_setting_a_certificate_alone_is_refused(service) -> None:
    assert_refused(
        service,
        "invalid enroll secret",
        "invalid_secret",
        "cert-only",
        "",
        certificate=certificate_of("cert-only", "02" * 32),
    )


# Upgrading a database made by the previous version

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_key TEXT NOT NULL UNIQUE,
    host_identifier TEXT NOT NULL,
    hardware_uuid TEXT NOT NULL,
    platform_type TEXT NOT NULL,
    platform TEXT NOT NULL,
    osquery_version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    host_details_json TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_by_machine ON nodes (host_identifier, hardware_uuid);
"""


def test_a_nodes_table_from_the_previous_version_is_upgraded(tmp_path: Path) -> None:
    state_dir = tmp_path / "old-state"
    state_dir.mkdir()
    old = sqlite3.connect(state_dir / "enroll.sqlite3")
    old.executescript(OLD_SCHEMA)
    old.execute(
        "INSERT INTO nodes VALUES ('node-old', 'old-key', 'veteran', 'uuid-veteran', '9',"
        " 'ubuntu', '5.0.0', 'veteran', ?, 1000, 1500, 0, 7)",
        (host_details("veteran", "uuid-veteran"),),
    )
    old.commit()
    old.close()
    with EnrollService(state_dir) as service:
        enroll = service.stub
        [node] = nodes(enroll)
        assert (node.node_id, node.identity, node.secret_name) == (
            "node-old",
            "uuid-veteran",
            "default",
        )
        assert (node.first_enrolled_at, node.pending, node.revoked) == (1000, False, False)
        # Migration 4 read its OS version out of the host details it enrolled with.
        assert node.os_version == "22.04"
        assert is_valid(enroll, "old-key")
        again = enrolled(enroll, "veteran").node
        assert again.node_id == "node-old" and again.first_enrolled_at == 1000
        assert not is_valid(enroll, "old-key")
        assert service.metric("quarry_enroll_valid_nodes") == 1
    # Opening the upgraded database again changes nothing.
    with EnrollService(state_dir) as service:
        assert [n.node_id for n in nodes(service.stub)] == ["node-old"]


def test_machines_enrolled_before_the_quota_counted_machines_re_enroll_within_it(
    tmp_path: Path,
) -> None:
    """A database from before migration 3: its nodes become the machines their secrets
    counted, so their re-enrollments after the upgrade take none of the quota."""
    settings = Settings(state_dir=tmp_path)
    database = open_state_database(settings, "enroll")
    try:
        before = ServiceSchema("enroll", (SchemaComponent("enroll.nodes", MIGRATIONS[:2]),))
        migrate_service(database, before)
        with database.transaction() as tx:
            tx.execute(
                "INSERT INTO enroll_secrets (secret_id, kind, name, tags_json, secret_group,"
                " created_at, expires_at, max_enrollments, enrollments, one_time,"
                " requires_approval, allows_reenrollment_after_revocation)"
                " VALUES ('s1', 'created', 'old', '[]', '', 1, 0, 1, 1, 0, 0, 0)"
            )
            tx.execute(
                "INSERT INTO nodes (node_id, node_key, host_identifier, hardware_uuid,"
                " platform_type, platform, osquery_version, hostname, host_details_json,"
                " enrolled_at, last_seen_at, revision, identity, secret_id, secret_name)"
                " VALUES ('n1', 'k1', 'h1', '', '', '', '', '', '{}', 1, 1, 1, 'm1', 's1', 'old')"
            )
        migrate_service(database, SERVICE_SCHEMA)
        store = NodeStore(database)
        assert store.knows_machine("s1", "m1") and not store.knows_machine("s1", "m2")
        [secret] = store.secrets_by_ref("s1")
        assert secret.state(2) == "exhausted"
        again = store.enroll(replace(NEW_NODE_TEMPLATE, identity="m1"), secret, now=3)
        assert again is not None and again.node.node_id == "n1"
        assert store.enroll(replace(NEW_NODE_TEMPLATE, identity="m2"), secret, now=4) is None
        assert store.secrets_by_ref("s1")[0].enrollments == 1
    finally:
        database.close()


NEW_NODE_TEMPLATE = NewNode(
    node_key="key",
    identity="",
    host_identifier="host",
    hardware_uuid="",
    hardware_serial="",
    platform_type="",
    platform="ubuntu",
    osquery_version="5.12.1",
    hostname="host",
    host_details_json="{}",
    client_certificate_json="",
    pending=False,
)
