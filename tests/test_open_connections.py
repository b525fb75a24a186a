"""Idle keep-alive connections at a real gateway: the open connections gauge, reuse, and
the idle-connection benchmark (gateway/http_connection.py, bench/idle_connections.py).

A `quarry up` with two gateway workers: the gauge is the sum of what both report, and
the kernel spreads the connections over them. Connections are real TLS connections made
the way osquery makes them (tests/emulator/http_client.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.idle_connections import Gateway, enroll, gateway_of, gauge_value, open_used_connections
from tests.emulator import osquery_ssl_context
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

CONNECTIONS = 7
READ_PATH = "/api/v1/osquery/distributed/read"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    env = {"QUARRY_GATEWAY_WORKERS": "2"}
    with quarry_cluster(tmp_path_factory.mktemp("connections"), extra_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(cluster: QuarryCluster) -> Gateway:
    return gateway_of(cluster.state_dir, cluster.port_base)


@pytest.fixture(scope="module")
def node_key(gateway: Gateway) -> str:
    return asyncio.run(enroll(gateway))


def open_connections(gateway: Gateway) -> float:
    value = gauge_value(gateway.metrics_url)
    assert value is not None, "quarry_gateway_open_connections is not exported"
    return value


def test_the_gauge_counts_open_connections_until_they_close(
    gateway: Gateway, node_key: str
) -> None:
    async def hold_then_close() -> tuple[float, float]:
        before = open_connections(gateway)
        connections = await open_used_connections(gateway, node_key, CONNECTIONS)
        held = await asyncio.to_thread(
            eventually, lambda: open_connections(gateway) == before + CONNECTIONS
        )
        for connection in connections:
            connection.close()
        closed = await asyncio.to_thread(eventually, lambda: open_connections(gateway) == before)
        return held, closed

    held, closed = asyncio.run(hold_then_close())
    assert held, "the gauge did not count the open connections"
    assert closed, "the gauge did not go back once they closed"


def distributed_read(node_key: str) -> bytes:
    body = json.dumps({"node_key": node_key}).encode()
    return (
        f"POST {READ_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split()[1]), json.loads(body)


def test_a_kept_alive_connection_answers_later_and_pipelined_requests(
    gateway: Gateway, node_key: str
) -> None:
    """Between requests the connection keeps no request state: the next ones still work."""

    async def exchange() -> list[tuple[int, dict]]:
        context: ssl.SSLContext = osquery_ssl_context(gateway.ca_file)
        reader, writer = await asyncio.open_connection(
            "localhost", gateway.address.port, ssl=context, server_hostname="localhost"
        )
        try:
            writer.write(distributed_read(node_key))
            answers = [await read_answer(reader)]
            await asyncio.sleep(0.5)  # idle, then the next request on the same connection
            writer.write(distributed_read(node_key))
            answers.append(await read_answer(reader))
            writer.write(distributed_read(node_key) * 3)  # pipelined in one write
            answers += [await read_answer(reader) for _ in range(3)]
            return answers
        finally:
            writer.close()

    answers = asyncio.run(exchange())
    assert len(answers) == 5
    assert all(status == 200 and "node_invalid" not in body for status, body in answers), answers


def test_the_benchmark_reports_memory_per_idle_connection(
    cluster: QuarryCluster, gateway: Gateway
) -> None:
    before = open_connections(gateway)
    command = [sys.executable, "-m", "bench.idle_connections", "--connections", "10", "--json"]
    where = ["--state-dir", str(cluster.state_dir), "--port-base", str(cluster.port_base)]
    result = subprocess.run(command + where, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["connections"] == 10
    assert figures["gateway_processes"] >= 3  # the parent and two workers
    assert figures["open_connections_gauge"] == before + 11  # and its warm-up connection
    assert figures["rss_before_bytes"] > 0 and figures["rss_idle_bytes"] > 0
    assert "kb_per_connection" in figures
    assert eventually(lambda: open_connections(gateway) == before)


def test_the_benchmark_refuses_bad_arguments_in_one_line() -> None:
    command = [sys.executable, "-m", "bench.idle_connections", "--connections", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--connections must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr
