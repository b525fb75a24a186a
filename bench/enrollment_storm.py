"""Enrollment storm: N new hosts enroll at once while M enrolled hosts keep checking in.

What a data-centre reboot or a migration does to a fleet server: a thousand osqueryd
start at once, each enrolls on a fresh TLS connection, while the rest of the fleet keeps
its check-ins going and must not notice. The phase enrolls M hosts first, starts their
distributed-read loops (a check-in every `checkin_interval_s`, random phase), times their
check-ins for a quiet window, then lets the N new hosts enroll as fast as the machine
allows (`concurrency` enrollments in flight) and reports the figures below. The enrolled
hosts run in a process of their own, so the storm generator's own work never counts as
their latency; both generators use uvloop when it is installed.

- enrollments/s (successful enrollments over the storm's wall time) and enroll latency;
- the enrolled hosts' check-in latency p50/p95/p99 during the storm, next to the quiet window;
- each server process's CPU per enrollment (its CPU during the storm less what the
  check-ins cost it in the quiet window, per second), the enrollments/s one core of
  server CPU carries at that cost, and the storm generator's own CPU per enrollment
  (it shares the machine's cores with the servers);
- that every new key works (one check-in per new host after the storm).

    python -m bench.enrollment_storm --storm-new-hosts 1000 --storm-enrolled-hosts 300

starts its own cluster (as `quarry up` does); `python -m bench` runs it as one phase
against the cluster it already started (`--skip-enrollment-storm` leaves it out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import random
import ssl
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from bench.fleet import ensure_file_descriptors
from bench.latency import LatencyHistogram
from bench.process_costs import ProcessSampler, costs_report, find_quarry_service_pids
from tests.emulator import HostProfile, OsqueryNode, osquery_ssl_context
from tests.quarry_cluster import QuarryCluster, quarry_cluster

T = TypeVar("T")
QUIET_WINDOW_S = 5.0
SETTLE_S = 2.0


@dataclass
class StormConfig:
    new_hosts: int = 1000
    enrolled_hosts: int = 300
    checkin_interval_s: float = 1.0  # each enrolled host's distributed read period
    concurrency: int = 200  # enrollments (TLS handshake + enroll POST) in flight at once
    retry_time_scale: float = 0.05  # osquery's enroll backoff, scaled as in bench/fleet.py
    seed: int = field(default_factory=lambda: time.time_ns() % 1_000_000_000)


@dataclass(frozen=True)
class Target:
    """The cluster as the load generators see it (picklable, for the probe process)."""

    gateway: str
    ca_file: str
    enroll_secret: str

    @classmethod
    def of(cls, cluster: QuarryCluster) -> Target:
        return cls(cluster.gateway, str(cluster.ca_cert), cluster.enroll_secret)


# (wall-clock start, seconds, ok) of one check-in
Sample = tuple[float, float, bool]


def new_node(
    config: StormConfig, target: Target, index: int, role: str, context: ssl.SSLContext
) -> OsqueryNode:
    return OsqueryNode(
        server=target.gateway,
        enroll_secret=target.enroll_secret,
        profile=HostProfile.make(index, seed=config.seed),
        host_identifier=f"storm{config.seed}-{role}-{index}",
        retry_time_scale=config.retry_time_scale,
        ssl_context=context,
    )


async def enroll_all(nodes: list[OsqueryNode], concurrency: int) -> tuple[LatencyHistogram, int]:
    """Enroll every node, `concurrency` at a time; (enroll latency, nodes that got a key)."""
    gate = asyncio.Semaphore(concurrency)
    latency = LatencyHistogram()

    async def one(node: OsqueryNode) -> bool:
        async with gate:
            started = time.perf_counter()
            key = await node.get_node_key()
            latency.record(time.perf_counter() - started)
            return bool(key)

    results = await asyncio.gather(*(one(node) for node in nodes))
    return latency, sum(results)


# --- the enrolled hosts: a process of their own, so the storm's client work on the
# --- generator's event loop never shows up as their latency


def checkin_probe(connection: Connection, target: Target, config: StormConfig) -> None:
    """Process entry: enroll the M hosts, say how many, check in until told to stop,
    then send back every check-in as a Sample."""
    run_loop(probe(connection, target, config))


async def probe(connection: Connection, target: Target, config: StormConfig) -> None:
    context = osquery_ssl_context(target.ca_file)
    nodes = [new_node(config, target, i, "enrolled", context) for i in range(config.enrolled_hosts)]
    _, ready = await enroll_all(nodes, 50)
    freeze_heap()
    samples: list[Sample] = []
    stop = asyncio.Event()
    loops = [
        asyncio.create_task(check_in_forever(node, config.checkin_interval_s, samples, stop))
        for node in nodes
    ]
    connection.send(ready)
    await asyncio.get_running_loop().run_in_executor(None, connection.recv)
    stop.set()
    await asyncio.gather(*loops)
    for node in nodes:
        await node.aclose()
    connection.send(samples)


async def check_in_forever(
    node: OsqueryNode, interval_s: float, samples: list[Sample], stop: asyncio.Event
) -> None:
    await asyncio.sleep(random.uniform(0, interval_s))
    while not stop.is_set():
        at, started = time.time(), time.perf_counter()
        work = await node.distributed_read()
        seconds = time.perf_counter() - started
        samples.append((at, seconds, work is not None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, interval_s - seconds))


def window(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    """Errors and latency of the check-ins that started in [start, end)."""
    latency, errors = LatencyHistogram(), 0
    for at, seconds, ok in samples:
        if start <= at < end:
            latency.record(seconds)
            errors += not ok
    return {"errors": errors, **latency.summary_ms()}


# --- the storm ----------------------------------------------------------------------------


@dataclass
class StormOutcome:
    started_at: float  # wall clock
    ended_at: float
    client_cpu_s: float
    enroll_latency: dict[str, Any]
    enrollments: int
    retries: int
    new_keys_working: int


async def storm(target: Target, config: StormConfig) -> StormOutcome:
    """Enroll the N new hosts as fast as `concurrency` allows; then check each new key."""
    context = osquery_ssl_context(target.ca_file)
    # Host indices differ from the probe's: the index decides the hardware UUID (identity).
    first = config.enrolled_hosts
    nodes = [new_node(config, target, first + i, "new", context) for i in range(config.new_hosts)]
    freeze_heap()
    started_at, cpu_started = time.time(), time.process_time()
    latency, enrollments = await enroll_all(nodes, config.concurrency)
    ended_at, client_cpu_s = time.time(), time.process_time() - cpu_started
    working = await keys_working(nodes, config.concurrency)
    for node in nodes:
        await node.aclose()
    return StormOutcome(
        started_at=started_at,
        ended_at=ended_at,
        client_cpu_s=client_cpu_s,
        enroll_latency=latency.summary_ms(),
        enrollments=enrollments,
        retries=sum(len(node.retry_sleeps) for node in nodes),
        new_keys_working=working,
    )


def freeze_heap() -> None:
    """Keep the generator's long-lived objects (its nodes) out of the garbage collector.

    Otherwise each full collection during the storm walks every node's objects: about a
    tenth of the generator's CPU in its profile, work no osquery host does.
    """
    gc.collect()
    gc.freeze()


async def keys_working(nodes: list[OsqueryNode], concurrency: int) -> int:
    """How many of the nodes' keys authenticate a check-in."""
    gate = asyncio.Semaphore(concurrency)

    async def one(node: OsqueryNode) -> bool:
        async with gate:
            return bool(node.node_key) and await node.distributed_read() is not None

    return sum(await asyncio.gather(*(one(node) for node in nodes)))


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (uvicorn[standard] brings it): a cheaper load generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_enrollment_storm(cluster: QuarryCluster, config: StormConfig) -> dict[str, Any]:
    """The phase, against a running cluster (what `python -m bench` calls)."""
    ensure_file_descriptors(2 * (config.new_hosts + config.enrolled_hosts) + 256)
    target = Target.of(cluster)
    ours, theirs = multiprocessing.Pipe()
    prober = multiprocessing.get_context("spawn").Process(
        target=checkin_probe, args=(theirs, target, config), daemon=True
    )
    prober.start()
    try:
        ready = ours.recv()
        time.sleep(config.checkin_interval_s + SETTLE_S)
        quiet_from = time.time()
        pids = find_quarry_service_pids(cluster.process.pid) if cluster.process else {}
        # The servers' CPU for check-ins alone, to take out of the storm's figures.
        with ProcessSampler(pids) as quiet:
            time.sleep(QUIET_WINDOW_S)
        with ProcessSampler(pids) as sampler:
            outcome = run_loop(storm(target, config))
        ours.send("stop")
        samples: list[Sample] = ours.recv()
    finally:
        prober.join(timeout=30)
        if prober.is_alive():
            prober.kill()
    storm_s = outcome.ended_at - outcome.started_at
    costs = costs_report(sampler.costs)
    baseline = costs_report(quiet.costs)
    server_ms = {
        name: round(
            (figures["cpu_s"] - baseline[name]["cpu_s"] * storm_s / QUIET_WINDOW_S)
            * 1000
            / max(outcome.enrollments, 1),
            3,
        )
        for name, figures in costs.items()
    }
    return {
        "config": asdict(config),
        "enrolled_hosts_ready": ready,
        "enrollments": outcome.enrollments,
        "storm_s": round(storm_s, 3),
        "enrollments_per_s": round(outcome.enrollments / storm_s, 1) if storm_s else 0.0,
        "enroll_retries": outcome.retries,
        "enroll_latency": outcome.enroll_latency,
        "checkins_quiet": window(samples, quiet_from, quiet_from + QUIET_WINDOW_S),
        "checkins_storm": window(samples, outcome.started_at, outcome.ended_at),
        "new_keys_working": outcome.new_keys_working,
        "server_cpu_s": costs,
        "client_cpu_s": round(outcome.client_cpu_s, 3),
        "client_cpu_ms_per_enrollment": round(
            outcome.client_cpu_s * 1000 / max(outcome.enrollments, 1), 3
        ),
        "server_cpu_ms_per_enrollment": server_ms,
        # What the servers alone allow: enrollments/s per core of server CPU, at the
        # storm's cost per enrollment (the generator's CPU on the same cores left out).
        "server_limited_enrollments_per_s_per_core": (
            round(1000 / server_ms["total"]) if server_ms.get("total", 0) > 0 else None
        ),
        "server_cpu_s_quiet_window": baseline,
    }


def markdown(figures: dict[str, Any]) -> str:
    config = figures["config"]
    quiet, during = figures["checkins_quiet"], figures["checkins_storm"]
    cpu = figures["server_cpu_ms_per_enrollment"]
    lines = [
        f"## Enrollment storm: {config['new_hosts']} new hosts while "
        f"{config['enrolled_hosts']} enrolled hosts check in every "
        f"{config['checkin_interval_s']:g} s",
        "",
        f"- {figures['enrollments']} enrollments in {figures['storm_s']:.2f} s: "
        f"**{figures['enrollments_per_s']:.0f} enrollments/s** ({config['concurrency']} in "
        f"flight; enroll p50 {_ms(figures['enroll_latency']['p50_ms'])}, "
        f"p99 {_ms(figures['enroll_latency']['p99_ms'])}; "
        f"{figures['enroll_retries']} retries); "
        f"{figures['new_keys_working']} new keys work.",
        "",
        "| enrolled hosts' check-ins | count | errors | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, window in (("quiet (before)", quiet), ("during the storm", during)):
        lines.append(
            f"| {name} | {window['count']} | {window['errors']} | {_ms(window['p50_ms'])} | "
            f"{_ms(window['p95_ms'])} | {_ms(window['p99_ms'])} | {_ms(window['max_ms'])} |"
        )
    per_process = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
    lines += [
        "",
        f"Server CPU per enrollment (ms; storm window less the check-ins' own CPU): "
        f"{per_process}; the storm's load "
        f"generator {figures['client_cpu_ms_per_enrollment']:.2f}, on the same cores.",
        "",
        f"Enrollments/s one core of server CPU carries at that cost: "
        f"{figures['server_limited_enrollments_per_s_per_core'] or '-'}.",
        "",
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.enrollment_storm", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    parser.add_argument(
        "--clickhouse-url", default="", help="a ClickHouse server (default: embedded chdb)"
    )
    parser.add_argument("--database-url", default="", help="PostgreSQL for the services' state")
    parser.add_argument("--port-base", type=int, default=0, help="cluster ports (default: free)")
    parser.add_argument("--json", action="store_true", help="print the JSON, not the markdown")
    return parser.parse_args(argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The phase's options (shared with `python -m bench`)."""
    defaults = StormConfig()
    parser.add_argument(
        "--storm-new-hosts",
        type=int,
        default=defaults.new_hosts,
        help=f"hosts enrolling in the storm (default {defaults.new_hosts})",
    )
    parser.add_argument(
        "--storm-enrolled-hosts",
        type=int,
        default=defaults.enrolled_hosts,
        help=f"enrolled hosts checking in meanwhile (default {defaults.enrolled_hosts})",
    )
    parser.add_argument(
        "--storm-checkin-interval",
        type=float,
        default=defaults.checkin_interval_s,
        help="seconds between an enrolled host's check-ins "
        f"(default {defaults.checkin_interval_s:g})",
    )
    parser.add_argument(
        "--storm-concurrency",
        type=int,
        default=defaults.concurrency,
        help=f"enrollments in flight at once (default {defaults.concurrency})",
    )


def storm_config(args: argparse.Namespace) -> StormConfig:
    return StormConfig(
        new_hosts=args.storm_new_hosts,
        enrolled_hosts=args.storm_enrolled_hosts,
        checkin_interval_s=args.storm_checkin_interval,
        concurrency=args.storm_concurrency,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    env = {"QUARRY_DATABASE_URL": args.database_url} if args.database_url else {}
    with (
        tempfile.TemporaryDirectory(prefix="quarry-storm-") as scratch,
        quarry_cluster(Path(scratch), args.clickhouse_url, env, args.port_base) as cluster,
    ):
        figures = run_enrollment_storm(cluster, storm_config(args))
    print(json.dumps(figures, indent=2) if args.json else markdown(figures))
    return 0 if figures["new_keys_working"] == figures["config"]["new_hosts"] else 1


if __name__ == "__main__":
    sys.exit(main())
