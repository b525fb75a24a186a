"""Enrollment end to end: emulated osquery nodes, the real gateway, `quarry secret|node`.

Every rule of docs/enrollment.md through the whole cluster started by `quarry up`: the
secret in the body (under osquery's default name and --tls_enroll_override names at once)
and in the URI (--tls_secret_always); named secrets with tags, expiry, quota, one-time use,
revocation and rotation; re-enrollment of the same machine; clones and the enroll cooldown;
approval; and node revocation. Secrets are created with the CLI, as an operator would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster

_host_numbers = itertools.count(1)
CLONE_SETTINGS = {
    "QUARRY_ENROLL_CLONE_THRESHOLD": "3",
    "QUARRY_ENROLL_CLONE_WINDOW_S": "600",
    "QUARRY_ENROLL_COOLDOWN_S": "600",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    # Logs are not the subject here: embedded chdb is enough.
    with quarry_cluster(tmp_path_factory.mktemp("enrollment"), "", CLONE_SETTINGS) as running:
        yield running


def new_node(cluster: QuarryCluster, secret: str, **options: object) -> OsqueryNode:
    """A fresh emulated host; osquery's retry sleeps are counted, not slept."""
    defaults: dict[str, object] = {
        "server": cluster.gateway,
        "ca_file": cluster.ca_cert,
        "enroll_secret": secret,
        "profile": HostProfile.make(next(_host_numbers), seed=cluster.port_base),
        "retry_time_scale": 0,
        "enroll_max_attempts": 1,
    }
    return OsqueryNode(**{**defaults, **options})  # type: ignore[arg-type]


def run(coroutine):
    return asyncio.run(coroutine)


def enroll(node: OsqueryNode) -> str:
    """One enrollment attempt; the node key, or "" (see `refusal` for why)."""

    async def attempt() -> str:
        async with node:
            return await node.enroll()

    return run(attempt())


def refusal(node: OsqueryNode) -> str:
    """Why the server refused the node's last enrollment (osquery itself only logs that no
    node key came back)."""
    answer = node.last_enroll_answer or {}
    assert answer.get("node_invalid") is True
    return str(answer.get("error", ""))


def create_secret(cluster: QuarryCluster, name: str, *options: str) -> str:
    return cluster.cli_json("secret", "create", name, *options)["value"]


def secret_named(cluster: QuarryCluster, name: str) -> dict:
    listed = cluster.cli_json("secret", "list", "--all")
    return next(s for s in listed if s["name"] == name)


def node_of(cluster: QuarryCluster, host_identifier: str) -> dict:
    nodes = cluster.cli_json("node", "list")
    return next(n for n in nodes if n["host_identifier"] == host_identifier)


# --- where osquery puts the secret -------------------------------------------------------


def test_the_secret_in_the_body_gets_a_node_key(cluster: QuarryCluster) -> None:
    assert enroll(new_node(cluster, cluster.enroll_secret))


def test_the_secret_in_the_uri_gets_a_node_key(cluster: QuarryCluster) -> None:
    # --tls_secret_always puts it in the query string of every request as well.
    assert enroll(new_node(cluster, cluster.enroll_secret, tls_secret_always=True))


def test_a_wrong_secret_gets_a_reason_and_changes_nothing(cluster: QuarryCluster) -> None:
    before = cluster.cli_json("node", "list")
    node = new_node(cluster, "not-a-secret")

    assert enroll(node) == ""
    assert refusal(node) == "invalid enroll secret"
    assert cluster.cli_json("node", "list") == before


def test_hosts_with_and_without_the_override_name_enroll_together(tmp_path: Path) -> None:
    renamed = {"QUARRY_ENROLL_SECRET_KEY": "fleet_secret, other_secret"}
    with quarry_cluster(tmp_path, "", renamed) as custom:
        secret = custom.enroll_secret
        mixed = [
            new_node(custom, secret, tls_enroll_override="fleet_secret"),
            new_node(custom, secret, tls_enroll_override="other_secret"),
            new_node(custom, secret),  # osquery's default name, enroll_secret
            new_node(custom, secret, tls_enroll_override="fleet_secret", tls_secret_always=True),
        ]

        async def all_at_once() -> list[str]:
            async def one(node: OsqueryNode) -> str:
                async with node:
                    return await node.enroll()

            return await asyncio.gather(*(one(node) for node in mixed))

        keys = run(all_at_once())
        assert all(keys) and len(set(keys)) == len(mixed)
        # A name the gateway was not given: the secret is not where it looks for it.
        stranger = new_node(custom, secret, tls_enroll_override="unknown_name")
        assert enroll(stranger) == ""
        assert refusal(stranger) == "invalid enroll secret"


# --- named secrets: tags, lifecycle --------------------------------------------------------


def test_a_named_secret_gives_its_tags_and_group(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "laptops", "--tag", "laptop", "--tag", "eu", "--group", "it")
    node = new_node(cluster, secret)

    assert enroll(node)
    listed = node_of(cluster, node.host_identifier)
    assert (sorted(listed["tags"]), listed["group"], listed["secret_name"]) == (
        ["eu", "laptop"],
        "it",
        "laptops",
    )
    shown = secret_named(cluster, "laptops")
    assert (shown["enrollments"], shown["state"]) == (1, "active")
    assert "value" not in shown and secret not in json.dumps(shown)


def test_a_one_time_secret_enrolls_one_host(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "one-shot", "--one-time")
    first, second = new_node(cluster, secret), new_node(cluster, secret)

    assert enroll(first)
    assert enroll(second) == ""
    assert refusal(second) == "enroll secret exhausted"
    assert secret_named(cluster, "one-shot")["enrollments"] == 1


def test_a_secret_stops_at_its_quota(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "quota-2", "--max-enrollments", "2")
    nodes = [new_node(cluster, secret) for _ in range(3)]

    assert [bool(enroll(node)) for node in nodes] == [True, True, False]
    assert refusal(nodes[2]) == "enroll secret exhausted"


def test_a_quota_counts_machines_not_their_re_enrollments(cluster: QuarryCluster) -> None:
    # Six hosts restart and re-enroll (twice each, as osquery does after losing its key):
    # they are still six machines of the eight the quota allows.
    secret = create_secret(cluster, "quota-8", "--max-enrollments", "8")
    hosts = [new_node(cluster, secret) for _ in range(6)]
    for _ in range(2):
        assert all(enroll(host) for host in hosts)
    assert secret_named(cluster, "quota-8")["enrollments"] == 6

    newcomers = [new_node(cluster, secret) for _ in range(3)]
    assert [bool(enroll(node)) for node in newcomers] == [True, True, False]
    assert refusal(newcomers[2]) == "enroll secret exhausted"
    # Used up, the secret still lets the machines it counted back in.
    assert secret_named(cluster, "quota-8")["state"] == "exhausted"
    assert enroll(hosts[0]) and enroll(newcomers[0])
    assert secret_named(cluster, "quota-8")["enrollments"] == 8

    listed = cluster.cli("secret", "list", "--all").stdout
    assert "machines" in listed.splitlines()[0]
    assert any("quota-8" in line and "8/8" in line for line in listed.splitlines())


def enroll_at_once(nodes: list[OsqueryNode]) -> list[str]:
    """Every node enrolls at the same moment (a data-centre reboot); their keys, or ""."""

    async def storm() -> list[str]:
        try:
            return list(await asyncio.gather(*(node.enroll() for node in nodes)))
        finally:
            for node in nodes:
                await node.aclose()

    return run(storm())


def test_a_storm_of_hosts_enrolling_at_once_all_get_distinct_working_keys(
    cluster: QuarryCluster,
) -> None:
    nodes = [new_node(cluster, cluster.enroll_secret) for _ in range(150)]
    keys = enroll_at_once(nodes)
    assert all(keys) and len(set(keys)) == 150

    async def check_in() -> list[bool]:
        try:
            return [await node.distributed_read() is not None for node in nodes]
        finally:
            for node in nodes:
                await node.aclose()

    assert run(check_in()) == [True] * 150
    listed = {n["host_identifier"] for n in cluster.cli_json("node", "list")}
    assert {node.host_identifier for node in nodes} <= listed


def test_a_quota_holds_when_many_hosts_enroll_at_once(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "storm-quota", "--max-enrollments", "10")
    nodes = [new_node(cluster, secret) for _ in range(40)]
    keys = enroll_at_once(nodes)
    assert sum(bool(key) for key in keys) == 10
    assert {refusal(node) for node, key in zip(nodes, keys, strict=True) if not key} == {
        "enroll secret exhausted"
    }
    assert secret_named(cluster, "storm-quota")["enrollments"] == 10


def test_an_expired_secret_is_refused(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "short-lived", "--expires", "2s")
    assert enroll(new_node(cluster, secret))
    time.sleep(2.5)
    late = new_node(cluster, secret)

    assert enroll(late) == ""
    assert refusal(late) == "enroll secret expired"
    assert secret_named(cluster, "short-lived")["state"] == "expired"


def test_a_revoked_secret_is_refused(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "to-revoke")
    cluster.cli("secret", "revoke", "to-revoke")
    node = new_node(cluster, secret)

    assert enroll(node) == ""
    assert refusal(node) == "enroll secret revoked"


def test_rotation_keeps_both_secrets_valid_during_the_grace(cluster: QuarryCluster) -> None:
    old = create_secret(cluster, "rotating", "--tag", "servers")
    rotated = cluster.cli_json("secret", "rotate", "rotating", "--grace", "3s")
    new = rotated["value"]

    assert new != old
    assert enroll(new_node(cluster, old))  # still valid during the grace
    fresh = new_node(cluster, new)
    assert enroll(fresh)
    assert node_of(cluster, fresh.host_identifier)["tags"] == ["servers"]  # same policy
    time.sleep(3.5)
    assert enroll(new_node(cluster, old)) == ""
    assert enroll(new_node(cluster, new))


# --- node identity ----------------------------------------------------------------------


def test_the_same_machine_enrolling_again_keeps_its_record(cluster: QuarryCluster) -> None:
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
    first = new_node(cluster, cluster.enroll_secret, profile=profile)
    old_key = enroll(first)
    node_id = node_of(cluster, first.host_identifier)["node_id"]
    # osquery's database wiped (reinstall): same hardware, no key.
    again = new_node(cluster, cluster.enroll_secret, profile=profile)
    new_key = enroll(again)

    assert old_key and new_key and new_key != old_key
    same_host = [
        n for n in cluster.cli_json("node", "list") if n["host_identifier"] == first.host_identifier
    ]
    assert [n["node_id"] for n in same_host] == [node_id]

    async def with_old_key() -> dict | None:
        async with new_node(cluster, "", profile=profile, node_key=old_key) as stale:
            return await stale.fetch_config()

    assert run(with_old_key()) is None  # node_invalid, and no secret to enroll again


def test_a_clone_is_reported_and_its_enroll_storm_waits(cluster: QuarryCluster) -> None:
    """Two live machines with one hardware UUID take each other's key in turn: after the
    threshold the identity is a suspected clone and further enrollments wait for the
    cooldown, while the key issued last keeps working."""
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)

    async def ping_pong() -> tuple[list[str], OsqueryNode]:
        keys = []
        twins = [new_node(cluster, cluster.enroll_secret, profile=profile) for _ in range(2)]
        try:
            for attempt in range(4):
                twin = twins[attempt % 2]
                keys.append(await twin.enroll())
                # The key is used after the second it was issued in (times are whole
                # seconds): the machine is alive. Last seen is written behind, in batches.
                if keys[-1]:
                    await asyncio.sleep(1.1)
                    assert await twin.fetch_config() is not None
                    await asyncio.sleep(0.5)
            return keys, twins[1]  # the one that tried fourth
        finally:
            for twin in twins:
                await twin.aclose()

    keys, refused = run(ping_pong())
    assert all(keys[:3]) and keys[3] == ""
    assert refusal(refused).startswith("re-enrolling too often")
    clones = cluster.cli_json("node", "list", "--clones")
    assert [n["host_identifier"] for n in clones] == [profile.hostname]

    async def last_key_still_works() -> dict | None:
        async with new_node(cluster, "", profile=profile, node_key=keys[2]) as real:
            return await real.fetch_config()

    assert run(last_key_still_works()) is not None


# --- approval and revocation -------------------------------------------------------------


def test_a_pending_node_gets_nothing_until_approved(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "needs-approval", "--require-approval")
    node = new_node(cluster, secret)

    async def config_reads_and_logs() -> tuple[dict | None, object, bool]:
        async with node:
            await node.get_node_key()
            status = log_records.status_record(node.host_identifier, 1_736_072_430, "waiting")
            logged = await node.send_logs("status", [status])
            return await node.fetch_config(), await node.distributed_read(), logged

    config, work, logged = run(config_reads_and_logs())
    assert config == {}
    assert work is not None and work.queries == {}
    assert logged  # its own logs are accepted: osquery would otherwise resend them for ever
    listed = node_of(cluster, node.host_identifier)
    assert listed["pending"] is True

    cluster.cli("node", "approve", listed["node_id"])

    def served_the_real_config() -> bool:
        async def fetch() -> dict | None:
            async with node:
                return await node.fetch_config()

        return run(fetch()) not in (None, {})

    assert eventually(served_the_real_config)
    assert node_of(cluster, node.host_identifier).get("pending", False) is False


def test_a_rejected_node_is_told_node_invalid(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "needs-approval-2", "--require-approval")
    node = new_node(cluster, secret)
    key = enroll(node)
    cluster.cli("node", "reject", node_of(cluster, node.host_identifier)["node_id"])

    async def fetch() -> tuple[dict | None, str]:
        async with new_node(cluster, "", profile=node.profile, node_key=key) as same:
            return await same.fetch_config(), same.node_key

    config, key_after = run(fetch())
    assert config is None and key_after == ""


def test_a_revoked_node_cannot_enroll_again_unless_its_secret_allows(
    cluster: QuarryCluster,
) -> None:
    strict = create_secret(cluster, "strict")
    lenient = create_secret(cluster, "lenient", "--allow-reenroll-after-revoke")
    for secret, may_return in ((strict, False), (lenient, True)):
        node = new_node(cluster, secret)
        assert enroll(node)
        cluster.cli("node", "revoke", node_of(cluster, node.host_identifier)["node_id"])
        again = new_node(cluster, secret, profile=node.profile)
        assert bool(enroll(again)) is may_return
        if not may_return:
            assert refusal(again) == "node revoked; re-enrollment not allowed"


# --- tags reach live-query targeting -------------------------------------------------------


def test_a_live_query_by_tag_reaches_only_the_nodes_of_that_tag(cluster: QuarryCluster) -> None:
    secret = create_secret(cluster, "web-tier", "--tag", "web")
    tagged = [new_node(cluster, secret) for _ in range(2)]
    other = new_node(cluster, cluster.enroll_secret)

    async def scenario() -> dict:
        nodes = [*tagged, other]
        stop = asyncio.Event()

        async def distributed_loop(node: OsqueryNode) -> None:
            while not stop.is_set():
                await node.run_distributed_once()
                await asyncio.sleep(0.1)

        try:
            for node in nodes:
                assert await node.get_node_key()
            loops = [asyncio.create_task(distributed_loop(node)) for node in nodes]
            args = ("query", "run", "SELECT hostname FROM system_info", "--tag", "web")
            result = await asyncio.to_thread(
                cluster.cli, *args, "--timeout", "30", "--json", check=False
            )
            stop.set()
            await asyncio.gather(*loops)
            return live_query_report(result)
        finally:
            for node in nodes:
                await node.aclose()

    report = run(scenario())
    answered = {host["host_identifier"]: host["state"] for host in report["hosts"]}
    assert answered == {node.host_identifier: "ANSWERED" for node in tagged}
