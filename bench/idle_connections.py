"""What an idle keep-alive TLS connection costs the gateway in memory.

osquery keeps one keep-alive connection per plugin thread (config, logger, distributed),
so a fleet of N hosts holds about 3N connections open at the gateway, idle nearly all
the time. This benchmark opens `--connections` TLS connections the way osquery does
(tests/emulator/http_client.py), sends one authenticated distributed read on each so it
is a used keep-alive connection, leaves them idle, and reads the gateway's RSS (VmRSS of
the gateway process and its workers, from /proc) before they open, while they are idle,
and after they close. It prints KB of gateway memory per idle connection, and the open
connections gauge (quarry_gateway_open_connections) while they are idle.

With `--large-body-kb N` each connection first carries one POST of an N KB body, as a
logger connection does with osquery's large result batches, and the figure is what such a
connection keeps once idle. The body goes to a path the gateway does not serve (answered
404 once read, the connection kept): it passes through the same TLS layer and read buffers
as a log batch, and nothing is stored. RSS is read once the gateway has handed back the
pages those bodies left (about 30 s later: gateway/connection_sweep.py).

    python -m bench.idle_connections --connections 2000            # its own `quarry up`
    python -m bench.idle_connections --connections 2000 --gateway-workers 2
    python -m bench.idle_connections --connections 2000 --large-body-kb 512
    python -m bench.idle_connections --connections 2000 \
        --state-dir /tmp/q-state --port-base 22000                 # a running `quarry up`

The client holds its connections in this process; it raises its own open-file limit to
the hard limit. The gateway needs one descriptor per connection too (`ulimit -n`).
Where the memory goes, and the figures: docs/performance.md, "Idle keep-alive connections".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from bench.process_costs import (
    all_stats,
    find_quarry_service_pids,
    listening_socket_inodes,
    owns_any_socket,
    process_tree,
    read_rss_bytes,
)
from gateway.connection_sweep import IDLE_SCAN_INTERVAL_S, SPENT_QUIET_S
from quarry.runtime.settings import Settings
from tests.emulator import osquery_ssl_context
from tests.emulator.http_client import HttpConnection, ServerAddress, osquery_headers
from tests.quarry_cluster import quarry_cluster

OSQUERY_VERSION = "5.23.1"
ENROLL_PATH = "/api/v1/osquery/enroll"
READ_PATH = "/api/v1/osquery/distributed/read"
LARGE_BODY_PATH = "/bench/large-body"  # not a gateway route: read, answered 404, not kept
OPEN_CONCURRENCY = 100  # handshakes in flight while opening (the gateway's CPU is the limit)
SETTLE_S = 6.0  # after opening or closing, before RSS is read: the gateway quiet, and past
# its sweep's 5 s memory trim (gateway/connection_sweep.py)
GAUGE = "quarry_gateway_open_connections"


@dataclass(frozen=True)
class Gateway:
    """Where the gateway listens, what it trusts, and its metrics endpoint."""

    address: ServerAddress
    ca_file: Path
    enroll_secret: str
    metrics_url: str
    pid: int


@dataclass(frozen=True)
class IdleConnectionsResult:
    connections: int
    gateway_processes: int  # uvicorn's parent and its workers when there are several
    rss_before_bytes: int
    rss_idle_bytes: int
    rss_after_bytes: int
    open_connections_gauge: float | None  # while they were idle (one more: the warm-up)
    large_body_kb: int = 0  # what each connection carried once before idling

    @property
    def kb_per_connection(self) -> float:
        return (self.rss_idle_bytes - self.rss_before_bytes) / self.connections / 1024

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "kb_per_connection": round(self.kb_per_connection, 1)}


def gateway_rss_bytes(pid: int) -> int:
    """RSS of the gateway process and its worker processes, summed."""
    return sum(read_rss_bytes(stat.pid) for stat in process_tree(pid, all_stats()))


def gateway_pid_on_port(port: int) -> int:
    """The oldest process holding the gateway's listening socket (uvicorn's parent)."""
    inodes = listening_socket_inodes(port)
    owners = [pid for pid in all_stats() if owns_any_socket(pid, inodes)]
    if not owners:
        raise SystemExit(f"no process listens on port {port}: is `quarry up` running there?")
    return min(owners)


def gauge_value(metrics_url: str, name: str = GAUGE) -> float | None:
    """One unlabelled sample from a Prometheus text endpoint, None when it is absent."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    return None


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if needed > hard:
        raise SystemExit(f"--connections {needed} needs more open files than the limit {hard}")


async def enroll(gateway: Gateway) -> str:
    """A node key for the requests, from one enrollment as osquery sends it."""
    body = {"enroll_secret": gateway.enroll_secret, "host_identifier": "idle-connections-bench"}
    answer = await post(HttpConnection(gateway.address, ssl_context(gateway)), gateway, "", body)
    if not answer.get("node_key"):
        raise SystemExit(f"enrollment failed: {answer}")
    return answer["node_key"]


async def post(connection: HttpConnection, gateway: Gateway, node_key: str, body: dict) -> dict:
    path = READ_PATH if node_key else ENROLL_PATH
    headers = osquery_headers(
        version=OSQUERY_VERSION, host_header=gateway.address.host, node_key=node_key
    )
    response = await connection.request("POST", path, headers, orjson.dumps(body))
    return orjson.loads(response.body)


def ssl_context(gateway: Gateway) -> ssl.SSLContext:
    return osquery_ssl_context(gateway.ca_file)


async def post_large_body(connection: HttpConnection, gateway: Gateway, size: int) -> None:
    headers = osquery_headers(version=OSQUERY_VERSION, host_header=gateway.address.host)
    response = await connection.request("POST", LARGE_BODY_PATH, headers, b"x" * size)
    if response.status != 404:
        raise SystemExit(f"a large body to {LARGE_BODY_PATH} was answered {response.status}")


async def open_used_connections(
    gateway: Gateway, node_key: str, count: int, large_body_kb: int = 0
) -> list:
    """`count` keep-alive connections, each having answered one distributed read (after
    one large body, with large_body_kb)."""
    context = ssl_context(gateway)
    connections = [HttpConnection(gateway.address, context) for _ in range(count)]
    limit = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def use(connection: HttpConnection) -> None:
        async with limit:
            if large_body_kb:
                await post_large_body(connection, gateway, large_body_kb * 1024)
            answer = await post(connection, gateway, node_key, {"node_key": node_key})
            if answer.get("node_invalid"):
                raise SystemExit("the gateway refused the enrolled node key")

    await asyncio.gather(*(use(connection) for connection in connections))
    if not all(connection.is_open for connection in connections):
        raise SystemExit("the gateway closed some connections after their first request")
    return connections


async def measure(gateway: Gateway, count: int, large_body_kb: int = 0) -> IdleConnectionsResult:
    raise_open_file_limit(count + 100)
    node_key = await enroll(gateway)
    # One connection first, open until the end: the request path's first-use allocations
    # (lazy imports, caches) are then in the figure before, not charged to the connections.
    warm_up = await open_used_connections(gateway, node_key, 1)
    await asyncio.sleep(SETTLE_S)
    before = gateway_rss_bytes(gateway.pid)
    connections = await open_used_connections(gateway, node_key, count, large_body_kb)
    # After large bodies the gateway hands their buffers' pages back once the connections
    # have carried none for SPENT_QUIET_S, at its next idle scan.
    await asyncio.sleep(SETTLE_S + (SPENT_QUIET_S + IDLE_SCAN_INTERVAL_S if large_body_kb else 0))
    idle = gateway_rss_bytes(gateway.pid)
    gauge = await asyncio.to_thread(gauge_value, gateway.metrics_url)
    for connection in connections + warm_up:
        connection.close()
    await asyncio.sleep(SETTLE_S)
    after = gateway_rss_bytes(gateway.pid)
    processes = len(process_tree(gateway.pid, all_stats()))
    return IdleConnectionsResult(count, processes, before, idle, after, gauge, large_body_kb)


def gateway_of(state_dir: Path, port_base: int, pid: int | None = None) -> Gateway:
    env = {"QUARRY_STATE_DIR": str(state_dir), "QUARRY_PORT_BASE": str(port_base)}
    settings = Settings.from_env(env)
    ca_file, secret_file = state_dir / "tls" / "ca.pem", state_dir / "enroll_secret"
    if not (ca_file.is_file() and secret_file.is_file()):
        raise SystemExit(f"{state_dir} is not the state directory of a started `quarry up`")
    return Gateway(
        address=ServerAddress("localhost", settings.gateway_port),
        ca_file=ca_file,
        enroll_secret=secret_file.read_text().strip(),
        metrics_url=f"http://{settings.bind_host}:{settings.metrics_port('gateway')}/metrics",
        pid=pid or gateway_pid_on_port(settings.gateway_port),
    )


def run_own_cluster(
    count: int, workers: int, clickhouse_url: str, large_body_kb: int = 0
) -> IdleConnectionsResult:
    """Start `quarry up` in a scratch directory, measure, stop it."""
    env = {"QUARRY_GATEWAY_WORKERS": str(workers)}
    with (
        tempfile.TemporaryDirectory(prefix="quarry-idle-") as scratch,
        quarry_cluster(Path(scratch), clickhouse_url, env) as cluster,
    ):
        assert cluster.process is not None
        pid = find_quarry_service_pids(cluster.process.pid)["gateway"]
        gateway = gateway_of(cluster.state_dir, cluster.port_base, pid)
        time.sleep(SETTLE_S)  # the gateway's workers finish starting
        return asyncio.run(measure(gateway, count, large_body_kb))


def report(result: IdleConnectionsResult) -> str:
    mib = 1024 * 1024
    gauge = result.open_connections_gauge
    gauge_text = "absent" if gauge is None else f"{gauge:g}"
    return "\n".join(
        [
            f"idle keep-alive TLS connections: {result.connections} "
            f"(gateway processes: {result.gateway_processes})"
            + (f", each after one {result.large_body_kb} KB body" if result.large_body_kb else ""),
            f"gateway RSS before: {result.rss_before_bytes / mib:.1f} MiB, "
            f"idle: {result.rss_idle_bytes / mib:.1f} MiB, "
            f"after closing: {result.rss_after_bytes / mib:.1f} MiB",
            f"per idle connection: {result.kb_per_connection:.1f} KB",
            f"{GAUGE} while idle: {gauge_text}",
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle_connections",
        description="Gateway memory per idle keep-alive TLS connection.",
    )
    parser.add_argument("--connections", type=int, default=2000, help="connections to hold open")
    parser.add_argument("--gateway-workers", type=int, default=1, help="for its own cluster")
    parser.add_argument("--clickhouse-url", default="", help="for its own cluster; empty: chdb")
    parser.add_argument("--state-dir", type=Path, help="measure the `quarry up` of this state dir")
    parser.add_argument("--port-base", type=int, help="that `quarry up`'s QUARRY_PORT_BASE")
    parser.add_argument(
        "--large-body-kb", type=int, default=0, help="one body this large on each first (KB)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if args.large_body_kb < 0:
        parser.error("--large-body-kb must be 0 or more")
    if (args.state_dir is None) != (args.port_base is None):
        parser.error("--state-dir and --port-base go together")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.state_dir is not None:
        gateway = gateway_of(args.state_dir, args.port_base)
        result = asyncio.run(measure(gateway, args.connections, args.large_body_kb))
    else:
        result = run_own_cluster(
            args.connections, args.gateway_workers, args.clickhouse_url, args.large_body_kb
        )
    print(json.dumps(result.as_dict(), indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
