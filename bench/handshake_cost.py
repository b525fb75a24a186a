"""Server CPU per TLS handshake: N fresh connections against a running gateway.

Each connection does what osquery's enroll does on the wire: a TCP connect, a full TLS
handshake with osquery's client settings (tests/emulator/http_client.py; osquery builds a
new client context per connection, so it never resumes a session), one small POST, and the
answer. The same number of POSTs is then sent over a few keep-alive connections, so
the difference between the two gateway CPU figures (utime + stime of the gateway process
and its workers, from /proc) is what the connection itself costs: TCP accept, the TLS
handshake and the connection's set-up and teardown in the gateway.

    python -m bench.handshake_cost --state-dir S --port-base P [--connections 2000]

The client runs in this process and its CPU is reported separately; it does not count.
Figures and what they mean: docs/performance.md, "Enrollment storms".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.enrollment_storm import run_loop
from bench.idle_connections import Gateway, gateway_of, raise_open_file_limit
from bench.process_costs import all_stats, process_tree
from tests.emulator import osquery_ssl_context
from tests.emulator.http_client import HttpConnection, osquery_headers

OSQUERY_VERSION = "5.23.1"
# A distributed read with a key no node has: answered from memory with node_invalid, so
# the request costs the same on every connection and touches no service.
READ_PATH = "/api/v1/osquery/distributed/read"
BODY = b'{"node_key":"handshake-cost-no-such-node"}'
KEEP_ALIVE_CONNECTIONS = 4


@dataclass(frozen=True)
class HandshakeCost:
    connections: int
    tls_version: str
    cipher: str
    session_tickets_received: int  # by the last connection's client
    fresh_gateway_cpu_ms: float  # connect + handshake + one POST, per connection
    keep_alive_gateway_cpu_ms: float  # one POST on an open connection
    per_handshake_gateway_cpu_ms: float  # the difference
    fresh_client_cpu_ms: float
    fresh_wall_s: float


def gateway_cpu_s(pid: int) -> float:
    ticks = sum(stat.cpu_ticks for stat in process_tree(pid, all_stats()))
    return ticks / os.sysconf("SC_CLK_TCK")


async def one_post(connection: HttpConnection, gateway: Gateway) -> None:
    headers = osquery_headers(version=OSQUERY_VERSION, host_header=gateway.address.host)
    response = await connection.request("POST", READ_PATH, headers, BODY)
    if b"node_invalid" not in response.body:
        raise SystemExit(f"unexpected answer {response.status}: {response.body[:200]!r}")


async def fresh_connections(
    gateway: Gateway, context: ssl.SSLContext, count: int, concurrency: int
) -> tuple[str, str, int]:
    """`count` connections, one POST each, closed; the last one's version, cipher, tickets."""
    gate = asyncio.Semaphore(concurrency)
    seen: list[tuple[str, str, int]] = []

    async def one() -> None:
        async with gate:
            connection = HttpConnection(gateway.address, context)
            await one_post(connection, gateway)
            seen.append(negotiated(connection))
            connection.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return seen[-1]


def negotiated(connection: HttpConnection) -> tuple[str, str, int]:
    ssl_object: ssl.SSLObject = connection._writer.get_extra_info("ssl_object")  # type: ignore[union-attr]
    session = ssl_object.session
    tickets = 1 if session is not None and session.has_ticket else 0
    return ssl_object.version() or "", (ssl_object.cipher() or ("",))[0], tickets


async def keep_alive_posts(gateway: Gateway, context: ssl.SSLContext, count: int) -> None:
    connections = [HttpConnection(gateway.address, context) for _ in range(KEEP_ALIVE_CONNECTIONS)]
    for connection in connections:  # opened before the measurement
        await one_post(connection, gateway)

    async def posts(connection: HttpConnection, n: int) -> None:
        for _ in range(n):
            await one_post(connection, gateway)

    share = count // KEEP_ALIVE_CONNECTIONS
    await asyncio.gather(*(posts(connection, share) for connection in connections))
    for connection in connections:
        connection.close()


def measure(gateway: Gateway, count: int, concurrency: int) -> HandshakeCost:
    raise_open_file_limit(concurrency + 100)
    context = osquery_ssl_context(gateway.ca_file)
    run_loop(fresh_connections(gateway, context, 50, concurrency))  # warm up

    cpu_before, client_before, wall_before = (
        gateway_cpu_s(gateway.pid),
        time.process_time(),
        time.perf_counter(),
    )
    version, cipher, tickets = run_loop(fresh_connections(gateway, context, count, concurrency))
    fresh_s = gateway_cpu_s(gateway.pid) - cpu_before
    client_s, wall_s = time.process_time() - client_before, time.perf_counter() - wall_before

    posts = count // KEEP_ALIVE_CONNECTIONS * KEEP_ALIVE_CONNECTIONS
    cpu_before = gateway_cpu_s(gateway.pid)
    run_loop(keep_alive_posts(gateway, context, posts))
    keep_alive_s = gateway_cpu_s(gateway.pid) - cpu_before

    fresh_ms, keep_alive_ms = fresh_s * 1000 / count, keep_alive_s * 1000 / posts
    return HandshakeCost(
        connections=count,
        tls_version=version,
        cipher=cipher,
        session_tickets_received=tickets,
        fresh_gateway_cpu_ms=round(fresh_ms, 3),
        keep_alive_gateway_cpu_ms=round(keep_alive_ms, 3),
        per_handshake_gateway_cpu_ms=round(fresh_ms - keep_alive_ms, 3),
        fresh_client_cpu_ms=round(client_s * 1000 / count, 3),
        fresh_wall_s=round(wall_s, 3),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.handshake_cost", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True, help="a running `quarry up`")
    parser.add_argument("--port-base", type=int, required=True, help="its QUARRY_PORT_BASE")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20, help="connections in flight")
    args = parser.parse_args(argv)
    gateway = gateway_of(args.state_dir, args.port_base)
    print(json.dumps(asdict(measure(gateway, args.connections, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()
