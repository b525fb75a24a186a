"""The gateway's CPU per request, on its own: closed loops of check-ins, then of log POSTs.

`python -m bench` measures a fleet at its schedule, where each process's CPU per request
also holds what a quiet process pays per wake-up. This measures what one request costs the
gateway when requests keep it busy: a fresh `quarry up`, one enrolled node, then C
keep-alive connections sending distributed reads back to back, then 20-line gzip event log
POSTs (the `events` workload's batches, each with new lines), each for D seconds. The
gateway's CPU (its processes' utime + stime from /proc) over each loop, divided by the
requests answered, is the figure; run it on two checkouts, alternating, to compare code.

    python -m bench.gateway_cost --seconds 15 --clickhouse-url clickhouse://...:PORT/quarry
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import orjson

from bench.event_payloads import numbered_log_body_factory
from bench.process_costs import all_stats, find_quarry_service_pids, process_tree
from bench.saturation import OSQUERY_VERSION, SaturationTarget, run_saturation
from tests.emulator import osquery_ssl_context
from tests.emulator.http_client import HttpConnection, ServerAddress, osquery_headers
from tests.quarry_cluster import QuarryCluster, quarry_cluster

TICKS_PER_S = 100  # /proc/PID/stat's clock ticks (USER_HZ)
LOG_LINES = 20
READ_PATH = "/api/v1/osquery/distributed/read"
LOG_PATH = "/api/v1/osquery/log"
ENROLL_PATH = "/api/v1/osquery/enroll"


def gateway_ticks(pid: int) -> int:
    return sum(stat.cpu_ticks for stat in process_tree(pid, all_stats()))


async def enroll(address: ServerAddress, cluster: QuarryCluster) -> str:
    connection = HttpConnection(address, osquery_ssl_context(cluster.ca_cert))
    headers = osquery_headers(version=OSQUERY_VERSION, host_header=address.host)
    body = {"enroll_secret": cluster.enroll_secret, "host_identifier": "gateway-cost"}
    try:
        answer = await connection.request(
            "POST", "/api/v1/osquery/enroll", headers, orjson.dumps(body)
        )
    finally:
        connection.close()
    return orjson.loads(answer.body)["node_key"]


def cost_of(pid: int, target: SaturationTarget, connections: int, seconds: float) -> dict:
    """One closed loop, and the gateway's CPU per request answered during it."""
    before = gateway_ticks(pid)
    result = run_saturation(target, connections=connections, duration_s=seconds)
    used_s = (gateway_ticks(pid) - before) / TICKS_PER_S
    answered = result.requests - result.errors
    return {
        "connections": connections,
        "requests_per_s": round(result.requests_per_s),
        "errors": result.errors,
        "gateway_cpu_us_per_request": round(used_s * 1e6 / answered) if answered else None,
    }


def measure(args: argparse.Namespace) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="quarry-gateway-cost-") as scratch,
        quarry_cluster(Path(scratch), args.clickhouse_url, {}, args.port_base or None) as cluster,
    ):
        assert cluster.process is not None
        pid = find_quarry_service_pids(cluster.process.pid)["gateway"]
        address = ServerAddress("localhost", int(cluster.gateway.rsplit(":", 1)[1]))
        context = osquery_ssl_context(cluster.ca_cert)
        key = asyncio.run(enroll(address, cluster))
        read = SaturationTarget(
            address, context, READ_PATH, orjson.dumps({"node_key": key}), node_key=key
        )
        log = SaturationTarget(
            address, context, LOG_PATH,
            numbered_log_body_factory(key, "gateway-cost", "pack_gateway_cost", LOG_LINES),
            node_key=key, compressed=True,
        )  # fmt: skip
        time.sleep(2)  # the caches' first snapshots
        run_saturation(read, connections=4, duration_s=2)  # first-use costs out of the figures
        return {
            "distributed_read": cost_of(pid, read, args.read_connections, args.seconds),
            "log_20_lines_gzip": cost_of(pid, log, args.log_connections, args.seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15, help="length of each loop")
    parser.add_argument("--read-connections", type=int, default=16)
    parser.add_argument("--log-connections", type=int, default=64)
    parser.add_argument("--clickhouse-url", default="", help="a ClickHouse server; empty: chdb")
    parser.add_argument("--port-base", type=int, default=0, help="default: a free one")
    print(json.dumps(measure(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
