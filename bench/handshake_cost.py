"""Server CPU per TLS handshake: N fresh connections against a running gateway.

Each connection does what osquery's enroll does on the wire: a TCP connect, a full TLS
handshake with osquery's client settings (tests/emulator/http_client.py; osquery builds a
new client context per connection, so it never resumes a session), one small POST, and the
answer. The same number of POSTs is then sent over a few keep-alive connections, so
the difference between the two gateway CPU figures (utime + stime of the gateway process
and its workers, from /proc) is what the connection itself costs: TCP accept, the TLS
handshake and the connection's set-up and teardown in the gateway.

    python -m bench.handshake_cost --gateway S:P [--gateway S2:P2] [--rounds 10]

With two gateways (say, two builds side by side) the rounds alternate between them, so a
machine whose load drifts weighs on both alike. The client runs in this process and its
CPU is reported separately; it does not count.
Figures and what they mean: docs/performance.md, "Enrollment storms".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
from dataclasses import dataclass
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


@dataclass
class HandshakeCost:
    """Totals over every round for one gateway; per-connection figures derived."""

    gateway: str
    connections: int = 0
    fresh_gateway_cpu_s: float = 0.0  # connect + handshake + one POST each
    keep_alive_gateway_cpu_s: float = 0.0  # as many POSTs on open connections
    fresh_client_cpu_s: float = 0.0
    negotiated: tuple[str, str, int] = ("", "", 0)  # version, cipher, tickets received

    def report(self) -> dict[str, object]:
        n = max(self.connections, 1)
        fresh_ms = self.fresh_gateway_cpu_s * 1000 / n
        keep_alive_ms = self.keep_alive_gateway_cpu_s * 1000 / n
        version, cipher, tickets = self.negotiated
        return {
            "gateway": self.gateway,
            "connections": self.connections,
            "tls_version": version,
            "cipher": cipher,
            "session_ticket_received": bool(tickets),
            "fresh_gateway_cpu_ms": round(fresh_ms, 3),
            "keep_alive_gateway_cpu_ms": round(keep_alive_ms, 3),
            "per_handshake_gateway_cpu_ms": round(fresh_ms - keep_alive_ms, 3),
            "fresh_client_cpu_ms": round(self.fresh_client_cpu_s * 1000 / n, 3),
        }


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

    share, extra = divmod(count, KEEP_ALIVE_CONNECTIONS)
    await asyncio.gather(
        *(posts(connection, share + (i < extra)) for i, connection in enumerate(connections))
    )
    for connection in connections:
        connection.close()


def one_round(gateway: Gateway, cost: HandshakeCost, count: int, concurrency: int) -> None:
    context = osquery_ssl_context(gateway.ca_file)
    cpu_before, client_before = gateway_cpu_s(gateway.pid), time.process_time()
    cost.negotiated = run_loop(fresh_connections(gateway, context, count, concurrency))
    cpu_between = gateway_cpu_s(gateway.pid)
    cost.fresh_client_cpu_s += time.process_time() - client_before
    run_loop(keep_alive_posts(gateway, context, count))
    cost.keep_alive_gateway_cpu_s += gateway_cpu_s(gateway.pid) - cpu_between
    cost.fresh_gateway_cpu_s += cpu_between - cpu_before
    cost.connections += count


def measure(
    gateways: dict[str, Gateway], rounds: int, per_round: int, concurrency: int
) -> list[HandshakeCost]:
    """Rounds alternate between the gateways (A B, B A, ...): drift hits them alike."""
    raise_open_file_limit(concurrency + 100)
    costs = {name: HandshakeCost(name) for name in gateways}
    for name, gateway in gateways.items():  # warm up
        one_round(gateway, HandshakeCost(name), 50, concurrency)
    order = list(gateways)
    for index in range(rounds):
        for name in order if index % 2 == 0 else reversed(order):
            one_round(gateways[name], costs[name], per_round, concurrency)
    return list(costs.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.handshake_cost", description=__doc__)
    parser.add_argument(
        "--gateway",
        action="append",
        required=True,
        metavar="STATE_DIR:PORT_BASE",
        help="a running `quarry up`; give two to compare them round by round",
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=400, help="per round and gateway")
    parser.add_argument("--concurrency", type=int, default=20, help="connections in flight")
    args = parser.parse_args(argv)
    gateways = {}
    for spec in args.gateway:
        state_dir, _, port_base = spec.rpartition(":")
        gateways[spec] = gateway_of(Path(state_dir), int(port_base))
    costs = measure(gateways, args.rounds, args.connections, args.concurrency)
    print(json.dumps([cost.report() for cost in costs], indent=2))


if __name__ == "__main__":
    main()
