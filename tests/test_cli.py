"""The `quarry` command's surface: every command has --help, every admin command --json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.cli.commands.enrollment import parse_duration, parse_expiry
from quarry.cli.main import build_parser
from quarry.encryption.gateway_certificates import ensure_certificates
from quarry.runtime.command_output import proto_to_json, utc_iso
from quarry.serving.grpc_runtime import sync_channel
from tests.free_ports import free_port_base
from tests.service_processes import ServiceProcess

ADMIN_COMMANDS = [
    ["sql", "SELECT 1"],
    ["config", "set", "-f", "x.json"],
    ["config", "show"],
    ["nodes", "list"],
    ["nodes", "revoke", "n"],
    ["secret", "create", "s"],
    ["secret", "list"],
    ["secret", "revoke", "s"],
    ["secret", "rotate", "s"],
    ["node", "list"],
    ["node", "show", "n"],
    ["node", "approve", "n"],
    ["node", "reject", "n"],
    ["node", "revoke", "n"],
    ["query", "run", "SELECT 1"],
    ["query", "show", "q"],
    ["query", "list"],
    ["query", "cancel", "q"],
    ["flags"],
    ["tls", "client-cert", "host-1"],
    ["token", "create", "t", "--role", "admin", "--expires-in", "90d"],
    ["token", "list"],
    ["token", "revoke", "t"],
    ["audit", "list"],
]


def quarry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quarry", *args], capture_output=True, text=True, timeout=60
    )


HELP_COMMANDS = [
    [], ["up"], ["serve"], ["sql"], ["config"], ["config", "set"], ["config", "show"],
    ["nodes"], ["nodes", "list"], ["nodes", "revoke"], ["query"], ["query", "run"],
    ["query", "show"], ["query", "list"], ["query", "cancel"], ["flags"],
    ["secret"], ["secret", "create"], ["secret", "list"], ["secret", "revoke"],
    ["secret", "rotate"], ["node"], ["node", "list"], ["node", "show"], ["node", "approve"],
    ["node", "reject"], ["node", "revoke"], ["tls"], ["tls", "client-cert"],
    ["token"], ["token", "create"], ["token", "list"], ["token", "revoke"], ["audit"],
    ["audit", "list"],
]  # fmt: skip


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "quarry")
def test_every_command_has_help(command: list[str]) -> None:
    result = quarry(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: quarry" in result.stdout


def test_token_create_help_says_tokens_never_expire_by_default() -> None:
    result = quarry("token", "create", "--help")
    assert "--expires-in" in result.stdout
    assert "never expires" in " ".join(result.stdout.split())


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_admin_command_takes_json(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--json"])
    assert args.json is True


def test_an_unreachable_service_is_a_clear_one_line_error(tmp_path) -> None:
    result = quarry("--state-dir", str(tmp_path), "--port-base", "1", "nodes", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("quarry nodes: UNAVAILABLE")
    assert "Traceback" not in result.stderr


def test_flags_name_the_ca_and_the_secret(tmp_path) -> None:
    result = quarry("--state-dir", str(tmp_path), "--port-base", "41000", "flags")
    assert result.returncode == 0, result.stderr
    flags = result.stdout.splitlines()
    assert "--tls_hostname=localhost:41000" in flags
    assert f"--tls_server_certs={tmp_path / 'tls' / 'ca.pem'}" in flags
    assert "--config_tls_endpoint=/api/v1/osquery/config" in flags


def test_a_client_certificate_is_issued_by_the_local_ca(tmp_path) -> None:
    tls_dir = tmp_path / "state" / "tls"
    ensure_certificates(tls_dir, ["localhost"])
    out = tmp_path / "certs"
    result = quarry("--state-dir", str(tmp_path / "state"), "tls", "client-cert", "host-1",
                    "-o", str(out), "--json")  # fmt: skip

    assert result.returncode == 0, result.stderr
    issued = json.loads(result.stdout)
    assert issued == {"name": "host-1", "cert": str(out / "host-1.pem"),
                      "key": str(out / "host-1.key")}  # fmt: skip
    certificate = x509.load_pem_x509_certificate((out / "host-1.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.rfc4514_string() == "CN=host-1"
    assert (out / "host-1.key").stat().st_mode & 0o777 == 0o600


def test_a_client_certificate_name_cannot_be_a_path(tmp_path) -> None:
    result = quarry("--state-dir", str(tmp_path), "tls", "client-cert", "../etc/x")
    assert result.returncode == 1
    assert result.stderr.startswith("quarry tls: '../etc/x': use letters")


# --- parsing what people type ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800)]
)
def test_durations_are_a_number_and_a_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "12", "h", "1.5h", "-3d", "2w", "12 hours"])
def test_a_malformed_duration_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="30s, 15m, 12h or 7d"):
        parse_duration(text)


def test_an_expiry_is_a_duration_from_now_or_a_utc_time() -> None:
    now = 1_767_225_600  # 2026-01-01T00:00:00Z
    assert parse_expiry("7d", now=now) == now + 7 * 86400
    assert parse_expiry("2026-12-31T00:00Z", now=now) == 1_798_675_200
    assert parse_expiry("2026-12-31T00:00", now=now) == 1_798_675_200  # naive means UTC
    assert parse_expiry("2026-12-31T01:00+01:00", now=now) == 1_798_675_200


@pytest.mark.parametrize(("text", "message"), [("2025-06-01T00:00Z", "in the past"),
                                               ("next week", "neither a duration")])  # fmt: skip
def test_a_useless_expiry_is_refused(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_expiry(text, now=1_767_225_600)


def test_times_are_shown_in_utc_iso_8601() -> None:
    assert utc_iso(1_798_675_200) == "2026-12-31T00:00:00Z"
    assert utc_iso(0) == "never"


def test_json_output_keeps_every_field_and_64_bit_numbers() -> None:
    secret = enroll_pb2.EnrollSecret(name="s", tags=["a"], expires_at=1_798_675_200)
    as_json = proto_to_json(secret)
    assert as_json["expires_at"] == 1_798_675_200
    assert as_json["tags"] == ["a"]
    assert as_json["max_enrollments"] == 0  # unset fields are present, not missing


# --- secrets and nodes against a real enroll service ----------------------------------
#
# The enroll service runs as a real process; enrollments go to it over real gRPC, as
# the gateway sends them, with the secret values the CLI printed.

BOOTSTRAP_SECRET = "bootstrap-secret-for-cli-tests"


@pytest.fixture(scope="module")
def enroll_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    state_dir = tmp_path_factory.mktemp("cli-enroll")
    (state_dir / "enroll_secret").write_text(BOOTSTRAP_SECRET + "\n")
    service = ServiceProcess("enroll", state_dir, free_port_base())
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture(scope="module")
def enroll_rpc(enroll_service: ServiceProcess) -> enroll_pb2_grpc.EnrollServiceStub:
    return enroll_pb2_grpc.EnrollServiceStub(sync_channel(enroll_service.addr))


def admin(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return quarry(
        "--state-dir", str(service.state_dir), "--port-base", str(service.port_base), *args
    )


def admin_ok(service: ServiceProcess, *args: str) -> str:
    result = admin(service, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def admin_json(service: ServiceProcess, *args: str) -> Any:
    return json.loads(admin_ok(service, *args, "--json"))


def enroll_host(
    rpc: enroll_pb2_grpc.EnrollServiceStub, secret: str, hardware_uuid: str = ""
) -> enroll_pb2.EnrollResponse:
    """One osquery enrollment of a Linux host, as the gateway passes it on."""
    hardware_uuid = hardware_uuid or str(uuid.uuid4()).upper()
    host = f"host-{hardware_uuid[:8].lower()}"
    details = {
        "os_version": {"name": "Ubuntu", "version": "22.04.4 LTS", "platform": "ubuntu"},
        "osquery_info": {"version": "5.12.1"},
        "system_info": {
            "hostname": host,
            "uuid": hardware_uuid,
            "hardware_vendor": "Dell Inc.",
            "hardware_model": "PowerEdge R650",
            "hardware_serial": f"SN{hardware_uuid[:6]}",
        },
    }
    request = enroll_pb2.EnrollRequest(
        enroll_secret=secret,
        host_identifier=host,
        platform_type="9",
        host_details_json=json.dumps(details),
        remote_addr="127.0.0.1",
    )
    return rpc.Enroll(request, timeout=10)


def create_secret(service: ServiceProcess, name: str, *options: str) -> dict:
    created = admin_json(service, "secret", "create", name, *options)
    assert created["value"], created
    return created


def listed_secrets(service: ServiceProcess, *options: str) -> dict[str, dict]:
    return {s["secret_id"]: s for s in admin_json(service, "secret", "list", *options)}


def listed_nodes(service: ServiceProcess, *filters: str) -> dict[str, dict]:
    return {n["node_id"]: n for n in admin_json(service, "node", "list", *filters)}


def test_a_created_secret_is_shown_once_enrolls_nodes_and_is_never_listed(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    result = admin(enroll_service, "secret", "create", "linux-prod", "--tag", "linux",
                   "--tag", "prod", "--group", "servers", "--max-enrollments", "5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    value = result.stdout.strip()
    assert len(value.splitlines()) == 1 and len(value) >= 32  # stdout holds the value alone
    assert "shown only now" in result.stderr
    assert "--enroll_secret_path" in result.stderr

    enrolled = enroll_host(enroll_rpc, value)
    assert enrolled.ok, enrolled.reason
    assert list(enrolled.node.tags) == ["linux", "prod"]
    assert enrolled.node.group == "servers"

    table = admin_ok(enroll_service, "secret", "list")
    as_json = admin_ok(enroll_service, "secret", "list", "--json")
    assert value not in table and value not in as_json
    row = next(line for line in table.splitlines() if line.startswith("linux-prod"))
    assert "1/5" in row and "linux,prod" in row and "servers" in row
    listed = next(s for s in json.loads(as_json) if s["name"] == "linux-prod")
    assert listed["enrollments"] == 1
    assert listed["last_used_at"] > 0
    assert "value" not in listed


def test_secret_create_json_carries_the_value_and_its_policy(
    enroll_service: ServiceProcess,
) -> None:
    before = int(time.time())
    created = create_secret(enroll_service, "laptops", "--expires", "7d", "--one-time",
                            "--require-approval", "--allow-reenroll-after-revoke")  # fmt: skip
    after = int(time.time())
    assert before + 7 * 86400 <= created["expires_at"] <= after + 7 * 86400
    assert created["one_time"] is True
    assert created["requires_approval"] is True
    assert created["allows_reenrollment_after_revocation"] is True
    assert created["state"] == "active"


def test_a_revoked_secret_is_listed_only_with_all_and_enrolls_nobody(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    created = create_secret(enroll_service, "to-revoke")
    output = admin_ok(enroll_service, "secret", "revoke", "to-revoke")
    assert "revoked enroll secret 'to-revoke'" in output

    assert created["secret_id"] not in listed_secrets(enroll_service)
    assert listed_secrets(enroll_service, "--all")[created["secret_id"]]["state"] == "revoked"
    refused = enroll_host(enroll_rpc, created["value"])
    assert not refused.ok
    assert refused.reason == "enroll secret revoked"


def test_rotation_gives_a_new_value_while_the_old_one_works_through_the_grace(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    old = create_secret(enroll_service, "rotating", "--tag", "web")
    before = int(time.time())
    new = admin_json(enroll_service, "secret", "rotate", "rotating", "--grace", "1h")
    after = int(time.time())

    assert new["value"] and new["value"] != old["value"]
    assert new["name"] == "rotating" and new["tags"] == ["web"]
    assert before + 3600 <= new["old_expires_at"] <= after + 3600
    for value in (old["value"], new["value"]):
        enrolled = enroll_host(enroll_rpc, value)
        assert enrolled.ok, enrolled.reason
        assert list(enrolled.node.tags) == ["web"]

    result = admin(enroll_service, "secret", "rotate", new["secret_id"], "--grace", "12h")
    assert result.returncode == 0, result.stderr
    assert "keeps working until 20" in result.stderr  # a UTC ISO-8601 time
    assert result.stdout.strip() not in (old["value"], new["value"])


def test_approval_flow_from_the_command_line(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    secret = create_secret(enroll_service, "needs-approval", "--require-approval")
    approved = enroll_host(enroll_rpc, secret["value"]).node.node_id
    rejected = enroll_host(enroll_rpc, secret["value"]).node.node_id

    pending = listed_nodes(enroll_service, "--status", "pending", "--secret", "needs-approval")
    assert set(pending) == {approved, rejected}
    assert {n["status"] for n in pending.values()} == {"pending"}

    assert "approved" in admin_ok(enroll_service, "node", "approve", approved)
    assert "rejected" in admin_ok(enroll_service, "node", "reject", rejected)

    assert set(
        listed_nodes(enroll_service, "--status", "active", "--secret", "needs-approval")
    ) == {approved}
    assert rejected in listed_nodes(enroll_service, "--status", "revoked")
    assert not listed_nodes(enroll_service, "--status", "pending", "--secret", "needs-approval")


def test_node_show_tells_identity_secret_enrollments_and_host(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    secret = create_secret(enroll_service, "shown", "--tag", "db")
    hardware_uuid = str(uuid.uuid4()).upper()
    node = enroll_host(enroll_rpc, secret["value"], hardware_uuid).node

    text = admin_ok(enroll_service, "node", "show", node.node_id)
    fields = dict(line.split(":", 1) for line in text.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["identity"] == hardware_uuid
    assert fields["enroll secret"] == "shown"
    assert fields["tags"] == "db"
    assert fields["status"] == "active"
    assert fields["suspected clone"] == "no"
    assert fields["hardware"] == "Dell Inc. PowerEdge R650"
    assert fields["first enrolled"].endswith("Z")

    details = admin_json(enroll_service, "node", "show", node.host_identifier)
    assert details["node"]["node_id"] == node.node_id
    assert details["node"]["node_key"] is None  # a credential never printed
    assert details["host_details_json"]["system_info"]["uuid"] == hardware_uuid
    assert details["recent_enrollments"] == 1


def test_re_enrollment_keeps_one_node_and_list_filters_by_tag_and_platform(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    secret = create_secret(enroll_service, "filters", "--tag", "kiosk")
    hardware_uuid = str(uuid.uuid4()).upper()
    first = enroll_host(enroll_rpc, secret["value"], hardware_uuid).node
    again = enroll_host(enroll_rpc, secret["value"], hardware_uuid).node

    assert again.node_id == first.node_id
    kiosks = listed_nodes(enroll_service, "--tag", "kiosk")
    assert list(kiosks) == [first.node_id]
    assert first.node_id in listed_nodes(enroll_service, "--tag", "kiosk", "--platform", "ubuntu")
    assert not listed_nodes(enroll_service, "--tag", "kiosk", "--platform", "windows")


def test_a_revoked_node_is_listed_as_revoked_and_the_old_alias_still_works(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    secret = create_secret(enroll_service, "revocable")
    node = enroll_host(enroll_rpc, secret["value"]).node

    output = admin_ok(enroll_service, "nodes", "revoke", node.node_id)
    assert "node_invalid" in output
    assert listed_nodes(enroll_service, "--status", "revoked")[node.node_id]["revoked"] is True
    old_listing = {n["node_id"]: n for n in admin_json(enroll_service, "nodes", "list")}
    assert old_listing[node.node_id]["status"] == "revoked"


def test_clones_are_listed_with_the_clones_filter(
    enroll_service: ServiceProcess, enroll_rpc: enroll_pb2_grpc.EnrollServiceStub
) -> None:
    secret = create_secret(enroll_service, "cloned-image")
    shared_uuid = str(uuid.uuid4()).upper()
    for _ in range(3):  # QUARRY_ENROLL_CLONE_THRESHOLD's default
        node = enroll_host(enroll_rpc, secret["value"], shared_uuid).node
        # Each copy uses its key before the next copy enrolls and replaces it.
        checkin = enroll_pb2.Checkin(node_id=node.node_id, seen_at=node.enrolled_at + 1)
        enroll_rpc.RecordCheckins(enroll_pb2.CheckinBatch(checkins=[checkin]), timeout=10)

    assert list(listed_nodes(enroll_service, "--clones", "--secret", "cloned-image")) == [
        node.node_id
    ]
    shown = admin_json(enroll_service, "node", "show", node.node_id)
    assert shown["suspected_clone"] is True


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        (["node", "show", "no-such-node"], "quarry node: NOT_FOUND"),
        (["node", "approve", "no-such-node"], "quarry node: NOT_FOUND"),
        (["secret", "revoke", "no-such-secret"], "quarry secret: NOT_FOUND"),
        (["secret", "rotate", "no-such-secret"], "quarry secret: NOT_FOUND"),
    ],
)
def test_unknown_names_are_a_clear_one_line_error(
    enroll_service: ServiceProcess, command: list[str], prefix: str
) -> None:
    result = admin(enroll_service, *command)
    assert result.returncode == 1
    assert result.stderr.startswith(prefix), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_option_value_is_refused_before_any_call(enroll_service: ServiceProcess) -> None:
    result = admin(enroll_service, "secret", "create", "x", "--max-enrollments", "0")
    assert result.returncode == 2
    assert "not a number of enrollments" in result.stderr
    assert "x" not in {s["name"] for s in admin_json(enroll_service, "secret", "list")}
