"""quarry.hosts through real processes: `quarry up` on chdb and on ClickHouse 18.16, emulated
osquery nodes enrolling with named secrets, a config with a label and node_tags, approval,
revocation, check-ins; the table follows within seconds, and after the enroll service or
ingest restarts it converges without writing again what did not change (ADR 0020).

Node names end with the cluster's port base, so rows other test modules left in the
shared ClickHouse server cannot satisfy an assertion.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from protos.v1 import logs_pb2, logs_pb2_grpc
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

FOLLOW_S = 30.0
LABEL = "deployers"
_numbers = itertools.count(1)
COLUMNS = (
    "host_identifier, hostname, platform, os_version, osquery_version, tags, labels,"
    " secret_name, status, toUInt32(enrolled_at), toUInt32(last_seen)"
)


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    # Last-seen times announced every second instead of every minute, for a short test.
    env = {"QUARRY_NODE_SEEN_INTERVAL_S": "1"}
    with quarry_cluster(tmp_path_factory.mktemp("hosts-table"), log_store_url, env) as running:
        yield running


def enroll(cluster: QuarryCluster, platform: str = "linux", secret: str = "") -> OsqueryNode:
    number = next(_numbers)
    profile = HostProfile.make(number, platform=platform, seed=cluster.port_base)  # type: ignore[arg-type]
    made = OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=secret or cluster.enroll_secret,
        profile=profile,
        host_identifier=f"hosts-{number}-{cluster.port_base}",
        retry_time_scale=0,
    )
    # Right after a service restart the gateway may still be reconnecting: try again.
    assert eventually(lambda: run(made, made.get_node_key), FOLLOW_S), made.last_enroll_answer
    return made


def run(made: OsqueryNode, call: Any, *args: Any) -> Any:
    async def go() -> Any:
        async with made:
            return await call(*args)

    return asyncio.run(go())


def sql(cluster: QuarryCluster, query: str) -> list[list]:
    """Rows of a query, through ingest's LogStore (what `quarry sql` calls)."""
    with cluster.channel("ingest") as channel:
        response = logs_pb2_grpc.LogStoreStub(channel).Query(
            logs_pb2.SqlRequest(sql=query), timeout=30
        )
    assert response.error == "", response.error
    return [orjson.loads(row) for row in response.rows_json]


def current(cluster: QuarryCluster, *nodes: OsqueryNode) -> dict[str, dict[str, Any]]:
    """hosts_current's row of each node, by host identifier."""
    names = ", ".join(f"'{node.host_identifier}'" for node in nodes)
    rows = sql(cluster, f"SELECT {COLUMNS} FROM quarry.hosts_current "
                        f"WHERE host_identifier IN ({names})")  # fmt: skip
    keys = ("host_identifier", "hostname", "platform", "os_version", "osquery_version",
            "tags", "labels", "secret_name", "status", "enrolled_at", "last_seen")  # fmt: skip
    return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}


def follows(cluster: QuarryCluster, node: OsqueryNode, **expected: Any) -> dict[str, Any]:
    """The node's current row once it has these values (asserted within FOLLOW_S)."""

    def matches() -> dict[str, Any] | None:
        row = current(cluster, node).get(node.host_identifier)
        return row if row and all(row[k] == v for k, v in expected.items()) else None

    row = eventually(matches, FOLLOW_S)
    assert row, (expected, current(cluster, node))
    return row


def version(cluster: QuarryCluster, node: OsqueryNode) -> int:
    """The version of the node's current row: which write it is."""
    query = (
        f"SELECT version FROM quarry.hosts_current WHERE host_identifier = '{node.host_identifier}'"
    )
    return sql(cluster, query)[0][0]


def apply_state(cluster: QuarryCluster, tmp_path: Path, state: dict[str, Any]) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    cluster.cli("config", "apply", "-f", str(path))


def test_hosts_follow_enrollment_approval_tags_labels_check_ins_and_revocation(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    prod = cluster.cli_json("secret", "create", "prod-web", "--tag", "prod")["value"]  # type: ignore[index]
    gated = cluster.cli_json("secret", "create", "gated", "--require-approval")["value"]  # type: ignore[index]
    web = enroll(cluster, "linux", prod)
    mac = enroll(cluster, "darwin")
    waiting = enroll(cluster, "linux", gated)

    row = follows(cluster, web, status="enrolled", tags=["prod"], secret_name="prod-web")
    assert row["hostname"] == web.profile.hostname
    assert row["platform"] == "ubuntu"
    assert row["os_version"] == "22.04.4 LTS (Jammy Jellyfish)"
    assert row["osquery_version"] == web.profile.osquery_version
    assert row["labels"] == [] and row["enrolled_at"] > 0
    follows(cluster, mac, status="enrolled", platform="darwin", os_version="14.5", tags=[])
    follows(cluster, waiting, status="pending", secret_name="gated")

    cluster.cli("node", "approve", waiting.host_identifier)
    follows(cluster, waiting, status="enrolled")

    # A dynamic label only web's host matches, and a tag the config gives mac.
    web.profile.users.append(("deploy", 1500))
    apply_state(cluster, tmp_path, {
        "blocks": {"base": {"targets": {"all": True}, "config": {}}},
        "labels": {LABEL: {"query": "SELECT 1 FROM users WHERE username = 'deploy'",
                           "interval": 1}},
        "node_tags": {mac.host_identifier: ["canary"]},
    })  # fmt: skip
    follows(cluster, mac, tags=["canary"])

    def labelled() -> bool:
        for node in (web, mac):  # answer the label's live query, as osquery would
            run(node, node.run_distributed_once)
        row = current(cluster, web).get(web.host_identifier, {})
        return row.get("labels") == [LABEL]

    assert eventually(labelled, FOLLOW_S), current(cluster, web)
    assert current(cluster, mac)[mac.host_identifier]["labels"] == []

    # Check-ins move last_seen, through the enroll service's SEEN events.
    enrolled_at = current(cluster, web)[web.host_identifier]["enrolled_at"]

    def seen_later() -> bool:
        run(web, web.run_distributed_once)
        return current(cluster, web)[web.host_identifier]["last_seen"] > enrolled_at

    assert eventually(seen_later, FOLLOW_S)

    cluster.cli("node", "revoke", mac.host_identifier)
    follows(cluster, mac, status="revoked")

    # Each node once, read either way.
    nodes = (web, mac, waiting)
    names = ", ".join(f"'{node.host_identifier}'" for node in nodes)
    final = sql(
        cluster,
        "SELECT host_identifier, status FROM quarry.hosts FINAL "
        f"WHERE host_identifier IN ({names}) ORDER BY host_identifier",
    )
    assert final == sorted([h, r["status"]] for h, r in current(cluster, *nodes).items())
    assert len(final) == 3


def test_the_cookbook_join_finds_processes_of_hosts_by_tag_and_os(cluster: QuarryCluster) -> None:
    prod = cluster.cli_json("secret", "create", "prod-db", "--tag", "prod")["value"]  # type: ignore[index]
    tagged, untagged = enroll(cluster, "linux", prod), enroll(cluster, "linux")
    for node in (tagged, untagged):
        follows(cluster, node, status="enrolled")
        records = log_records.event_records(
            "pack_hunt_processes", node.host_identifier, int(time.time()),
            added=[{"pid": "4242", "path": "/tmp/.x/miner", "name": "miner"}],
        )  # fmt: skip
        assert run(node, node.send_logs, "result", records)
    query = f"""SELECT r.host_identifier, columns_path
FROM (
    SELECT host_identifier, node_id, column_values[indexOf(column_names, 'path')] AS columns_path
    FROM quarry.results WHERE name = 'pack_hunt_processes'
) AS r
ALL INNER JOIN (
    SELECT node_id FROM quarry.hosts_current
    WHERE has(tags, 'prod') AND platform = 'ubuntu' AND os_version LIKE '22.04%'
        AND status = 'enrolled'
) AS h USING node_id
WHERE r.host_identifier LIKE '%-{cluster.port_base}'"""

    def found() -> list[list]:
        return sql(cluster, query)

    rows = eventually(lambda: found() or None, FOLLOW_S)
    assert rows == [[tagged.host_identifier, "/tmp/.x/miner"]]


def test_hosts_follow_after_the_enroll_service_restarts(cluster: QuarryCluster) -> None:
    before = enroll(cluster)
    follows(cluster, before, status="enrolled")
    old_pid = cluster.service_pid("enroll")
    cluster.kill_service("enroll")
    assert eventually(lambda: restarted(cluster, "enroll", old_pid), 60)
    # The new enroll process's changes reach quarry.hosts: ingest's stream reconnected.
    after = enroll(cluster)
    follows(cluster, after, status="enrolled")
    cluster.cli("node", "revoke", before.host_identifier)
    follows(cluster, before, status="revoked")


def test_after_ingest_restarts_the_table_converges_without_writing_again(
    cluster: QuarryCluster,
) -> None:
    unchanged, revoked, probe = enroll(cluster), enroll(cluster), enroll(cluster)
    for node in (unchanged, revoked, probe):
        follows(cluster, node, status="enrolled")
    written = version(cluster, unchanged)
    old_pid = cluster.service_pid("ingest")
    cluster.kill_service("ingest")
    # Revoked while ingest is down (or restarting): its snapshot must say so.
    cluster.cli("node", "revoke", revoked.host_identifier)
    assert eventually(lambda: restarted(cluster, "ingest", old_pid), 60)
    follows(cluster, revoked, status="revoked")
    cluster.cli("node", "revoke", probe.host_identifier)
    follows(cluster, probe, status="revoked")  # the restarted ingest follows live changes
    # Its row was not written again: the same version (merges never change it).
    assert version(cluster, unchanged) == written
    assert current(cluster, unchanged)[unchanged.host_identifier]["status"] == "enrolled"


def restarted(cluster: QuarryCluster, service: str, old_pid: int) -> bool:
    """`quarry up` runs a new process for the service, and it answers."""
    try:
        if cluster.service_pid(service) == old_pid:
            return False
    except LookupError:
        return False
    return cluster.cli("node", "list", "--json", check=False).returncode == 0 and (
        service != "ingest" or bool(sql_or_none(cluster))
    )


def sql_or_none(cluster: QuarryCluster) -> list[list] | None:
    try:
        return sql(cluster, "SELECT 1")
    except Exception:
        return None
