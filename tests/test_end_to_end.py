"""End to end: emulated osquery nodes against a cluster started by `quarry up`.

Every request crosses the real HTTPS gateway (TLS with the CA Quarry generated), the
real gRPC services, the real ZeroMQ log path and the real log store: embedded chdb,
and Debian's ClickHouse 18.16 server. Rows are checked through `quarry sql`, the way
an analyst reads them, and, on the server, straight from ClickHouse as well.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client

from quarry.runtime.clickhouse_sql import sql_string
from tests.emulator import (
    FLEET_ENDPOINTS,
    OSQUERY_DOC_ENDPOINTS,
    HostProfile,
    LogBuffer,
    OsqueryNode,
    log_records,
)
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

NOW = 1_736_072_430
_host_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry"), log_store_url) as running:
        yield running


def new_node(cluster: QuarryCluster, **options: object) -> OsqueryNode:
    """A fresh emulated host; osquery's retry sleeps are skipped (counted, not slept)."""
    defaults: dict[str, object] = {
        "server": cluster.gateway,
        "ca_file": cluster.ca_cert,
        "enroll_secret": cluster.enroll_secret,
        "profile": (profile := HostProfile.make(next(_host_numbers), seed=cluster.port_base)),
        # Like --host_identifier=uuid: unique across runs sharing one ClickHouse server.
        "host_identifier": profile.hardware_uuid.lower(),
        "retry_time_scale": 0,
    }
    return OsqueryNode(**{**defaults, **options})  # type: ignore[arg-type]


def run(coroutine):
    return asyncio.run(coroutine)


def node_id_of(cluster: QuarryCluster, host_identifier: str) -> str:
    nodes = cluster.cli_json("nodes", "list")
    return next(n["node_id"] for n in nodes if n["host_identifier"] == host_identifier)


# --- enrollment and config ------------------------------------------------------------


def test_a_node_enrolls_and_gets_the_config_set_from_the_command_line(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    config = {
        "options": {"distributed_interval": 10, "logger_tls_period": 5},
        "schedule": {"procs": {"query": "SELECT pid, name FROM processes", "interval": 60}},
        "packs": {
            "monitoring": {
                "queries": {
                    "info": {
                        "query": "SELECT * FROM osquery_info",
                        "interval": 3600,
                        "snapshot": True,
                    }
                }
            }
        },
        "decorators": {"load": ["SELECT uuid AS host_uuid FROM system_info"]},
    }
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config, indent=2))
    cluster.cli("config", "set", "-f", str(config_file))

    async def scenario() -> OsqueryNode:
        async with new_node(cluster) as node:
            assert await node.get_node_key()

            async def served() -> bool:
                return await node.fetch_config() == config

            deadline = time.monotonic() + 30
            while not await served() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return node

    node = run(scenario())
    assert node.config == config
    assert node.enrollments == 1
    assert json.loads(node.config_text) == config
    assert cluster.cli_json("config", "show")["config_json"] == config


def test_a_wrong_enroll_secret_gets_no_node_key(cluster: QuarryCluster) -> None:
    async def scenario() -> OsqueryNode:
        async with new_node(cluster, enroll_secret="not-the-secret", enroll_max_attempts=2) as node:
            assert await node.get_node_key() == ""
            return node

    node = run(scenario())
    assert node.enrollments == 0
    assert node.counters.requests == 2  # osquery's retry loop ran, and got nothing
    assert node.last_error == "No node key returned from TLS enroll plugin"


def test_an_invalid_config_is_refused_with_a_clear_message(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schedule": {"x": {"query": "SELECT 1", "interval": 0}}}))
    result = cluster.cli("config", "set", "-f", str(bad), check=False)
    assert result.returncode == 1
    assert "interval" in result.stderr


# --- node_invalid and re-enrollment -----------------------------------------------------


def test_an_unknown_node_key_gets_node_invalid_and_the_node_re_enrolls(
    cluster: QuarryCluster,
) -> None:
    async def scenario() -> tuple[OsqueryNode, dict | None]:
        async with new_node(cluster, node_key="a-key-quarry-never-issued") as node:
            config = await node.fetch_config()
            return node, config

    node, config = run(scenario())
    assert config is not None  # the second attempt, after re-enrolling, succeeded
    assert node.enrollments == 1
    assert node.node_key != "a-key-quarry-never-issued"
    assert node.retry_sleeps[:1] == [1]  # osquery's 1 s pause between config attempts


def test_a_revoked_node_is_told_node_invalid_on_every_endpoint(cluster: QuarryCluster) -> None:
    async def enroll() -> tuple[str, str]:
        async with new_node(cluster) as node:
            return await node.get_node_key(), node.host_identifier

    old_key, host = run(enroll())
    cluster.cli("nodes", "revoke", node_id_of(cluster, host))

    async def after_revocation() -> tuple[OsqueryNode, bool, object]:
        async with new_node(cluster, node_key=old_key, enroll_max_attempts=1) as node:
            logged = await node.send_logs(
                "status", [log_records.status_record(host, NOW, "after revoke")]
            )
            key_after_logs = node.node_key
            work = await node.distributed_read()
            return node, logged, (key_after_logs, work)

    node, logged, (key_after_logs, work) = run(after_revocation())
    assert logged is False  # the batch stays in osquery's buffer
    assert key_after_logs == ""  # node_invalid cleared the key
    assert work is not None  # the distributed read re-enrolled and then succeeded
    assert node.node_key and node.node_key != old_key


# --- logs into ClickHouse ---------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_result_and_status_logs_land_in_clickhouse(
    cluster: QuarryCluster, log_store_url: str, compress: bool
) -> None:
    query = f"test_results_{'gzip' if compress else 'plain'}"

    async def scenario() -> str:
        async with new_node(cluster, logger_tls_compress=compress) as node:
            host = node.host_identifier
            records = [
                *log_records.event_records(
                    query,
                    host,
                    NOW,
                    added=[{"pid": "1", "name": "init"}, {"pid": "2", "name": "kthreadd"}],
                    removed=[{"pid": "3", "name": "gone"}],
                    decorations={"username": "alice"},
                ),
                log_records.batch_record(
                    query + "_batch",
                    host,
                    NOW,
                    counter=2,
                    added=[{"pid": "4", "name": "sshd"}],
                    removed=[{"pid": "5", "name": "cron"}],
                ),
                log_records.snapshot_record(
                    query + "_snapshot",
                    host,
                    NOW,
                    [{"path": "/bin/sh", "pid": "6"}, {"path": "/bin/ls", "pid": "7"}],
                ),
            ]
            assert await node.send_logs("result", records)
            status = log_records.status_record(host, NOW, f"status for {query}", severity=1)
            assert await node.send_logs("status", [status])
            return host

    host = run(scenario())
    rows = cluster.sql(
        "SELECT name, action, column_names, column_values, decoration_names, counter, "
        f"toUnixTimestamp(unix_time) AS t FROM quarry.results WHERE host_identifier = "
        f"{sql_string(host)} ORDER BY name, action, column_values"
    )
    seen = [
        (r["name"], r["action"], dict(zip(r["column_names"], r["column_values"], strict=True)))
        for r in rows
    ]
    assert seen == [
        (query, "added", {"name": "init", "pid": "1"}),
        (query, "added", {"name": "kthreadd", "pid": "2"}),
        (query, "removed", {"name": "gone", "pid": "3"}),
        (query + "_batch", "added", {"name": "sshd", "pid": "4"}),
        (query + "_batch", "removed", {"name": "cron", "pid": "5"}),
        (query + "_snapshot", "snapshot", {"path": "/bin/ls", "pid": "7"}),
        (query + "_snapshot", "snapshot", {"path": "/bin/sh", "pid": "6"}),
    ]
    assert all(r["t"] == NOW for r in rows)
    assert rows[0]["decoration_names"] == ["username"]
    assert {r["counter"] for r in rows if r["name"] == query + "_batch"} == {2}

    status = cluster.sql(
        "SELECT message, severity, filename FROM quarry.status_logs "
        f"WHERE host_identifier = {sql_string(host)}"
    )
    assert status == [
        {"message": f"status for {query}", "severity": 1, "filename": "scheduler.cpp"}
    ]

    if log_store_url:  # the ClickHouse server itself holds them, for any client to read
        direct = Client.from_url(log_store_url).execute(
            "SELECT count() FROM quarry.results WHERE host_identifier = %(h)s", {"h": host}
        )
        assert direct == [(7,)]


def test_a_log_batch_sent_twice_is_stored_once(cluster: QuarryCluster) -> None:
    async def scenario() -> str:
        async with new_node(cluster) as node:
            host = node.host_identifier
            records = log_records.event_records("twice", host, NOW, added=[{"x": "1"}])
            assert await node.send_logs("result", records)
            assert await node.send_logs("result", records)  # osquery's resend after a lost reply
            return host

    host = run(scenario())
    rows = cluster.sql(
        f"SELECT count() AS n FROM quarry.results WHERE host_identifier = {sql_string(host)}"
    )
    assert rows == [{"n": 1}]


def test_logs_are_refused_while_ingest_is_down_and_kept_until_it_is_back(
    cluster: QuarryCluster,
) -> None:
    """Nothing acknowledged before it is stored: the logger keeps its batch and retries."""

    async def scenario() -> tuple[str, list[dict[str, bool]]]:
        async with new_node(cluster) as node:
            host = node.host_identifier
            assert await node.get_node_key()
            buffer = LogBuffer(node, period_s=0)
            for i in range(3):
                buffer.add_result(log_records.event_record("outage", host, NOW, {"i": str(i)}))
            cluster.kill_service("ingest")
            outcomes = [await buffer.check()]
            assert buffer.pending("result") == 3  # refused, so still buffered
            deadline = time.monotonic() + 60
            while buffer.pending() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                outcomes.append(await buffer.check())
            return host, outcomes

    host, outcomes = run(scenario())
    assert outcomes[0] == {"result": False}
    assert outcomes[-1] == {"result": True}
    rows = cluster.sql(
        "SELECT column_values FROM quarry.results "
        f"WHERE host_identifier = {sql_string(host)} ORDER BY column_values"
    )
    assert [r["column_values"] for r in rows] == [["0"], ["1"], ["2"]]


# --- both path sets, bad input ----------------------------------------------------------


@pytest.mark.parametrize(
    "endpoints", [FLEET_ENDPOINTS, OSQUERY_DOC_ENDPOINTS], ids=["fleet", "docs"]
)
def test_every_endpoint_answers_at_both_path_sets(cluster: QuarryCluster, endpoints) -> None:
    async def scenario() -> None:
        async with new_node(cluster, endpoints=endpoints) as node:
            assert await node.fetch_config() is not None
            host = node.host_identifier
            assert await node.send_logs("status", [log_records.status_record(host, NOW, "hi")])
            round_ = await node.run_distributed_once()
            assert round_.work is not None
            carve = await node.carve(b"x" * 100)
            assert carve.ok and carve.session_id  # tests/test_carving.py covers carving

    run(scenario())


def raw_post(cluster: QuarryCluster, path: str, body: bytes, headers: dict[str, str]) -> dict:
    """One HTTPS POST with an arbitrary body, outside the emulator's well-formed requests."""
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    host, port = cluster.gateway.split(":")
    with (
        socket.create_connection((host, int(port))) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {cluster.gateway}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize(
    ("path", "body", "headers", "expected"),
    [
        ("/api/v1/osquery/config", b"{not json", {}, "not valid JSON"),
        ("/api/v1/osquery/log", b"[1, 2]", {}, "JSON object"),
        ("/api/v1/osquery/log", b"plain text", {"Content-Encoding": "gzip"}, "gzip"),
        ("/enroll", b'{"enroll_secret": 42}', {}, "invalid enroll secret"),
    ],
    ids=["bad-json", "not-an-object", "bad-gzip", "secret-not-a-string"],
)
def test_bad_input_gets_a_json_error_and_the_gateway_keeps_serving(
    cluster: QuarryCluster, path: str, body: bytes, headers: dict[str, str], expected: str
) -> None:
    answer = raw_post(cluster, path, body, headers)
    assert expected in answer["error"]

    async def still_serving() -> dict | None:
        async with new_node(cluster) as node:
            return await node.fetch_config()

    assert run(still_serving()) is not None


def test_a_log_post_with_a_valid_key_but_bad_data_gets_an_error(cluster: QuarryCluster) -> None:
    async def key() -> str:
        async with new_node(cluster) as node:
            return await node.get_node_key()

    node_key = run(key())
    body = json.dumps({"node_key": node_key, "log_type": "result", "data": "oops"}).encode()
    assert "array" in raw_post(cluster, "/log", body, {})["error"]
    for log_type in ("nope", ["result"], None):
        body = json.dumps({"node_key": node_key, "log_type": log_type, "data": []}).encode()
        assert "log_type must be" in raw_post(cluster, "/log", body, {})["error"]


def test_the_node_key_is_accepted_from_the_authorization_header_alone(
    cluster: QuarryCluster,
) -> None:
    async def key() -> str:
        async with new_node(cluster) as node:
            return await node.get_node_key()

    node_key = run(key())
    served = raw_post(cluster, "/config", b"{}", {"Authorization": f"NodeKey {node_key}"})
    assert "options" in served and "node_invalid" not in served
    refused = raw_post(cluster, "/config", b"{}", {"Authorization": "NodeKey not-a-key"})
    assert refused == {"node_invalid": True}


# --- delivery guarantee: ingest killed mid-stream ------------------------------------------


async def flush_until_delivered(buffer: LogBuffer, timeout_s: float = 60) -> None:
    """osquery's forwarder ticks until its buffer is empty (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while buffer.pending() and time.monotonic() < deadline:
        await buffer.check()
        await asyncio.sleep(0.5)


def copies_per_line(cluster: QuarryCluster, host: str) -> list[dict]:
    """How many times each line ("i" column) of this host is stored; [] while unreachable."""
    try:
        return cluster.sql(
            "SELECT column_values[1] AS i, count() AS n FROM quarry.results "
            f"WHERE host_identifier = {sql_string(host)} GROUP BY i ORDER BY toUInt32(i)"
        )
    except AssertionError:
        return []  # ingest still restarting: `quarry sql` failed


def test_logs_acked_before_ingest_is_killed_are_stored_exactly_once(
    cluster: QuarryCluster,
) -> None:
    """Acked means fsynced to the spool: a SIGKILL right after the acks loses nothing, and
    the replay after the restart stores each line once."""

    async def scenario() -> tuple[str, int]:
        async with new_node(cluster) as node:
            host = node.host_identifier
            assert await node.get_node_key()
            buffer = LogBuffer(node, period_s=0)
            for i in range(10):
                buffer.add_result(log_records.event_record("killed", host, NOW, {"i": str(i)}))
                assert await buffer.check() == {"result": True}
            cluster.kill_service("ingest")
            # More lines while ingest is down or restarting: refused, kept, retried.
            for i in range(10, 20):
                buffer.add_result(log_records.event_record("killed", host, NOW, {"i": str(i)}))
            await flush_until_delivered(buffer)
            return host, buffer.pending()

    host, left = run(scenario())
    assert left == 0

    rows = eventually(lambda: len(copies_per_line(cluster, host)) == 20, timeout_s=60)
    rows = copies_per_line(cluster, host)
    assert rows == [{"i": str(i), "n": 1} for i in range(20)]


def test_a_gateway_restart_loses_nothing_and_nodes_carry_on(cluster: QuarryCluster) -> None:
    """The gateway holds no state: killed, restarted by `quarry up`, it re-syncs its caches
    from the services; the node keeps its key and its buffered lines reach ClickHouse once."""

    async def scenario() -> tuple[str, str, str, int]:
        async with new_node(cluster) as node:
            host = node.host_identifier
            key_before = await node.get_node_key()
            buffer = LogBuffer(node, period_s=0)
            for i in range(5):
                buffer.add_result(log_records.event_record("gw-restart", host, NOW, {"i": str(i)}))
            assert await buffer.check() == {"result": True}
            cluster.kill_service("gateway")
            for i in range(5, 10):
                buffer.add_result(log_records.event_record("gw-restart", host, NOW, {"i": str(i)}))
            await flush_until_delivered(buffer)
            assert await node.fetch_config() is not None
            return host, key_before, node.node_key, buffer.pending()

    host, key_before, key_after, left = run(scenario())
    assert left == 0
    assert key_after == key_before  # the restarted gateway knew the key: no re-enrollment
    rows = copies_per_line(cluster, host)
    assert rows == [{"i": str(i), "n": 1} for i in range(10)]
