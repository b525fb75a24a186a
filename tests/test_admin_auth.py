"""Admin tokens, roles and the audit log, against a cluster started by `quarry up`.

The CLI runs as a real process with QUARRY_STATE_DIR of the cluster, so it finds the
bootstrap root token in state_dir/admin_token; other tokens are passed as
QUARRY_ADMIN_TOKEN, the way a person or a CI job would.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from protos.v1 import enroll_pb2
from quarry.access.admin_auth import ADMIN_METHODS, request_summary
from tests.emulator import HostProfile, OsqueryNode
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("admin-auth")) as running:
        yield running


def cli_as(
    cluster: QuarryCluster, token: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """`quarry ARGS` with token as QUARRY_ADMIN_TOKEN; None: the default (the root file)."""
    env = cluster.env()
    if token is not None:
        env["QUARRY_ADMIN_TOKEN"] = token
    command = [sys.executable, "-m", "quarry", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def create_token(cluster: QuarryCluster, name: str, role: str, *options: str) -> str:
    created = cluster.cli_json("token", "create", name, "--role", role, *options)
    assert created["name"] == name and created["role"] == role
    return created["value"]


def audit(cluster: QuarryCluster, *options: str) -> list[dict]:
    return cluster.cli_json("audit", "list", *options)  # type: ignore[return-value]


def test_the_bootstrap_token_is_a_private_file_the_cli_uses(cluster: QuarryCluster) -> None:
    token_file = cluster.state_dir / "admin_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert cluster.cli_json("secret", "list") is not None
    tokens = {t["name"]: t for t in cluster.cli_json("token", "list")}
    assert tokens["root"]["role"] == "admin"
    assert "value" not in tokens["root"]


def test_a_token_value_is_never_stored(cluster: QuarryCluster) -> None:
    value = create_token(cluster, "never-stored", "read-only")
    assert value.encode() not in (cluster.state_dir / "enroll.sqlite3").read_bytes()


def test_no_token_is_a_clear_one_line_unauthenticated_error(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    env = cluster.env()
    env["QUARRY_STATE_DIR"] = str(tmp_path)  # no admin_token file here
    result = subprocess.run(
        [sys.executable, "-m", "quarry", "--port-base", str(cluster.port_base), "node", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quarry node: UNAUTHENTICATED: no valid admin token")


def test_an_unknown_token_is_unauthenticated(cluster: QuarryCluster) -> None:
    result = cli_as(cluster, "qt_made-up", "secret", "list")
    assert result.returncode == 1
    assert "UNAUTHENTICATED: unknown or revoked admin token" in result.stderr


def test_a_read_only_token_lists_but_may_not_revoke_or_run_live_queries(
    cluster: QuarryCluster,
) -> None:
    reader = create_token(cluster, "reader", "read-only")
    assert cli_as(cluster, reader, "node", "list").returncode == 0
    assert cli_as(cluster, reader, "query", "list").returncode == 0
    assert cli_as(cluster, reader, "sql", "SELECT 1").returncode == 0

    refused = cli_as(cluster, reader, "node", "revoke", "some-node")
    assert refused.returncode == 1
    assert "PERMISSION_DENIED: token 'reader' (read-only) may not call RevokeNode" in (
        refused.stderr
    )
    refused = cli_as(cluster, reader, "query", "run", "SELECT 1", "--timeout", "1")
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr and "StartQuery" in refused.stderr
    refused = cli_as(cluster, reader, "token", "create", "sneaky", "--role", "admin")
    assert "PERMISSION_DENIED" in refused.stderr


def test_an_operator_runs_live_queries_but_may_not_create_secrets(
    cluster: QuarryCluster,
) -> None:
    operator = create_token(cluster, "oncall", "operator")
    ran = cli_as(cluster, operator, "query", "run", "SELECT 1", "--timeout", "1", "--json")
    assert ran.returncode == 0, ran.stderr
    refused = cli_as(cluster, operator, "secret", "create", "ops-secret")
    assert refused.returncode == 1
    assert "PERMISSION_DENIED: token 'oncall' (operator) may not call CreateSecret" in (
        refused.stderr
    )


def test_a_revoked_token_is_refused_everywhere(cluster: QuarryCluster) -> None:
    leaving = create_token(cluster, "leaving", "admin")
    assert cli_as(cluster, leaving, "query", "list").returncode == 0  # cached as valid by now
    cluster.cli("token", "revoke", "leaving")
    # The enroll service itself refuses at once; other services within their cache time.
    refused = cli_as(cluster, leaving, "secret", "list")
    assert "UNAUTHENTICATED: unknown or revoked admin token" in refused.stderr
    listed = {t["name"]: t for t in cluster.cli_json("token", "list", "--all")}
    assert listed["leaving"]["revoked_at"] > 0
    assert "leaving" not in {t["name"] for t in cluster.cli_json("token", "list")}


def tokens_by_name(cluster: QuarryCluster) -> dict[str, dict]:
    return {t["name"]: t for t in cluster.cli_json("token", "list", "--all")}  # type: ignore[union-attr]


def test_an_expired_token_is_refused_everywhere_saying_it_expired(cluster: QuarryCluster) -> None:
    brief = create_token(cluster, "brief", "admin", "--expires-in", "2s")
    listed = tokens_by_name(cluster)["brief"]
    assert listed["expires_at"] == listed["created_at"] + 2

    def refused_as_expired() -> bool:
        result = cli_as(cluster, brief, "secret", "list")
        return "UNAUTHENTICATED: admin token 'brief' expired at " in result.stderr

    assert eventually(refused_as_expired)
    # The config service checks the expiry too, whatever its cache of the token holds.
    refused = cli_as(cluster, brief, "config", "show")
    assert refused.returncode == 1
    assert "UNAUTHENTICATED: admin token 'brief' expired at " in refused.stderr
    assert tokens_by_name(cluster)["brief"]["state"] == "expired"
    assert "brief" in {t["name"] for t in cluster.cli_json("token", "list")}
    expired_calls = audit(cluster, "--token", "brief")
    assert any(e["outcome"] == "UNAUTHENTICATED" for e in expired_calls), expired_calls


def test_a_token_with_a_long_lifetime_works_and_shows_its_expiry(cluster: QuarryCluster) -> None:
    quarterly = create_token(cluster, "quarterly", "read-only", "--expires-in", "90d")
    assert cli_as(cluster, quarterly, "node", "list").returncode == 0
    listed = tokens_by_name(cluster)["quarterly"]
    assert listed["expires_at"] == listed["created_at"] + 90 * 86400
    assert listed["state"] == "active"
    table = cluster.cli("token", "list").stdout
    assert "expires" in table and "last used" in table


def test_a_bad_lifetime_is_a_clear_error(cluster: QuarryCluster) -> None:
    for bad in ("0s", "soon", "-5m"):
        result = cli_as(cluster, None, "token", "create", "bad-life", "--role", "admin",
                        "--expires-in", bad)  # fmt: skip
        assert result.returncode == 2
        assert "--expires-in" in result.stderr
    assert "bad-life" not in tokens_by_name(cluster)


def test_last_use_is_shown_and_never_used_tokens_say_never(cluster: QuarryCluster) -> None:
    used = create_token(cluster, "used", "read-only")
    create_token(cluster, "unused", "read-only")
    assert cli_as(cluster, used, "config", "show").returncode == 0
    tokens = tokens_by_name(cluster)
    assert tokens["used"]["last_used_at"] >= tokens["used"]["created_at"] > 0
    assert tokens["unused"]["last_used_at"] == 0
    row = next(line for line in cluster.cli("token", "list").stdout.splitlines()
               if line.startswith("unused"))  # fmt: skip
    assert row.split()[2:] == ["active", row.split()[3], "never", "never"]


def test_every_admin_call_is_in_the_audit_log_with_its_outcome(cluster: QuarryCluster) -> None:
    auditor = create_token(cluster, "auditor", "read-only")
    cli_as(cluster, auditor, "secret", "list")
    cli_as(cluster, auditor, "secret", "create", "audited-secret")
    cli_as(cluster, auditor, "config", "show")
    cli_as(cluster, "qt_made-up", "node", "list")

    mine = audit(cluster, "--token", "auditor")
    calls = [(e["method"].rsplit("/", 1)[-1], e["outcome"], e["service"]) for e in mine]
    assert ("ListSecrets", "OK", "enroll") in calls
    assert ("CreateSecret", "PERMISSION_DENIED", "enroll") in calls
    assert any(service == "config" for _, _, service in calls), calls
    assert all(e["role"] == "read-only" and e["at_ms"] > 0 for e in mine)
    create = next(e for e in mine if e["method"].endswith("/CreateSecret"))
    assert "name=audited-secret" in create["summary"]

    anonymous = [e for e in audit(cluster) if e["token_name"] == ""]
    assert any(e["outcome"] == "UNAUTHENTICATED" for e in anonymous)
    root_calls = audit(cluster, "--token", "root")
    assert any(e["method"].endswith("/CreateToken") for e in root_calls)
    assert all(e["at_ms"] >= audit(cluster)[0]["at_ms"] for e in root_calls)
    assert audit(cluster, "--since", "2999-01-01T00:00Z") == []


def test_a_created_token_value_never_reaches_the_audit_log(cluster: QuarryCluster) -> None:
    value = create_token(cluster, "quiet", "operator")
    assert value not in str(audit(cluster))


def test_secret_fields_are_left_out_of_the_summary() -> None:
    request = enroll_pb2.EnrollRequest(enroll_secret="hunter2", host_identifier="host-1")
    assert request_summary(request) == "host_identifier=host-1"
    node_key = "k" * 40
    assert node_key not in request_summary(enroll_pb2.NodeRef(node=node_key))


def test_the_hot_path_needs_no_token(cluster: QuarryCluster) -> None:
    assert "/quarry.v1.EnrollService/Enroll" not in ADMIN_METHODS
    node = OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=(profile := HostProfile.make(7, seed=cluster.port_base)),
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )

    async def enroll_and_check_in() -> tuple[str, object]:
        async with node:
            key = await node.enroll()
            return key, await node.fetch_config()

    key, config = asyncio.run(enroll_and_check_in())
    assert key and config is not None
    hosts = [n["host_identifier"] for n in cluster.cli_json("node", "list")]
    assert profile.hardware_uuid.lower() in hosts


# (command, method, service, status code, what the error says)
REFUSED_CALLS = [
    (
        ("node", "approve", "no-such-node"),
        "ApproveNode",
        "enroll",
        "NOT_FOUND",
        "no node named 'no-such-node': `quarry node list --search no-such-node`",
    ),
    (
        ("config", "rollout", "promote"),
        "PromoteRollout",
        "config",
        "FAILED_PRECONDITION",
        "no rollout in progress",
    ),
    (
        ("query", "cancel", "q_no_such_campaign"),
        "CancelCampaign",
        "distributed",
        "NOT_FOUND",
        "no campaign with id 'q_no_such_campaign'",
    ),
]


def test_a_call_each_service_refuses_is_answered_and_audited_with_its_code(
    cluster: QuarryCluster,
) -> None:
    for command, _, _, _, message in REFUSED_CALLS:
        refused = cluster.cli(*command, check=False)
        assert refused.returncode == 1 and message in refused.stderr, refused
    outcomes = {
        (e["method"].rsplit("/", 1)[-1], e["service"]): e["outcome"]
        for e in audit(cluster, "--token", "root")
    }
    for _, method, service, code, _ in REFUSED_CALLS:
        assert outcomes.get((method, service)) == code, (method, outcomes)
