"""`python -m bench.soak` (what `make soak` runs): a long run with random process kills.

A cluster started by `quarry up`, a simulated osquery fleet (bench/fleet.py) on it, and every
30-90 s a SIGKILL to a random Quarry service, which `quarry up` restarts. Every service's
memory is sampled from /proc while it runs. At the end it checks the fault matrix's promise
(docs/faults.md): the log rows ClickHouse holds equal the rows osquery was told were stored,
no row is stored twice, and no process's memory kept growing. Exit status 0 only if all hold.

Not a test: it takes 10 minutes by default (`--minutes`), and pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import FleetConfig, FleetResult, run_fleet
from bench.payloads import config_for_packs
from bench.process_costs import (
    QUARRY_SERVICES,
    all_stats,
    find_quarry_service_pids,
    process_tree,
    read_rss_bytes,
)
from tests.quarry_cluster import QuarryCluster, quarry_cluster

SAMPLE_INTERVAL_S = 10.0
WARM_UP_SHARE = 0.2  # a process's memory is judged once it has been up this share of the run
MAX_MEMORY_GROWTH = 0.5  # the soak's verdict, not a unit-test threshold
SETTLE_TIMEOUT_S = 180.0  # for the spool to be replayed after the fleet stops

# What makes a stored row itself: two equal rows are the same line stored twice.
ROW_IDENTITIES = {
    "results": (
        "quarry.results",
        "host_identifier, name, action, unix_time, counter, column_names, column_values",
    ),
    "status": ("quarry.status_logs", "host_identifier, unix_time, filename, line, message"),
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the fleet runs")
    parser.add_argument("--hosts", type=int, default=100, help="simulated osquery hosts")
    parser.add_argument(
        "--kill-every",
        type=float,
        nargs=2,
        default=(30.0, 90.0),
        metavar=("MIN_S", "MAX_S"),
        help="seconds between kills, drawn uniformly",
    )
    parser.add_argument("--seed", type=int, default=0, help="0: a fresh seed each run")
    parser.add_argument("--clickhouse-url", default="", help='"" for embedded chdb')
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


@dataclass
class MemorySamples:
    """RSS of each service process (with any workers) over time: (second, pid, bytes)."""

    started: float = field(default_factory=time.monotonic)
    by_service: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)

    def sample(self, supervisor_pid: int) -> dict[str, int]:
        stats = all_stats()
        now = time.monotonic() - self.started
        current = {}
        for service, pid in find_quarry_service_pids(supervisor_pid).items():
            rss = sum(read_rss_bytes(stat.pid) for stat in process_tree(pid, stats))
            self.by_service.setdefault(service, []).append((now, pid, rss))
            current[service] = rss
        return current

    def verdict(self, warm_up_s: float) -> dict[str, dict[str, Any]]:
        """Per service, judged on its longest-lived process (a kill starts a fresh one):
        RSS once that process has been up `warm_up_s`, at its last sample, and the peak."""
        report = {}
        for service, samples in self.by_service.items():
            lives: dict[int, list[tuple[float, int]]] = {}
            for second, pid, rss in samples:
                lives.setdefault(pid, []).append((second, rss))
            pid, life = max(lives.items(), key=lambda item: item[1][-1][0] - item[1][0][0])
            steady = [rss for second, rss in life if second - life[0][0] >= warm_up_s]
            if len(steady) < 2:
                report[service] = {"judged": False, "stable": True, "samples": len(life)}
                continue
            growth = steady[-1] / steady[0] - 1
            report[service] = {
                "judged": True,
                "pid": pid,
                "judged_over_s": round(life[-1][0] - life[0][0] - warm_up_s, 1),
                "after_warm_up_mb": round(steady[0] / 2**20, 1),
                "end_mb": round(steady[-1] / 2**20, 1),
                "peak_mb": round(max(steady) / 2**20, 1),
                "growth": round(growth, 3),
                "stable": growth <= MAX_MEMORY_GROWTH,
            }
        return report


def kill_randomly(
    cluster: QuarryCluster,
    stop: threading.Event,
    rng: random.Random,
    every: tuple[float, float],
    kills: list[dict[str, Any]],
    started: float,
) -> None:
    """SIGKILL a random service at random intervals until stopped; `quarry up` restarts it."""
    while not stop.wait(rng.uniform(*every)):
        service = rng.choice(QUARRY_SERVICES)
        second = round(time.monotonic() - started, 1)
        try:
            cluster.kill_service(service)
        except LookupError:  # still restarting from the previous kill
            progress(f"{second:>6} s  {service} not running, no kill")
            continue
        kills.append({"at_s": second, "service": service})
        progress(f"{second:>6} s  SIGKILL {service} (kill {len(kills)})")


def sample_memory(
    cluster: QuarryCluster, stop: threading.Event, memory: MemorySamples, kills: list
) -> None:
    assert cluster.process is not None
    while not stop.wait(SAMPLE_INTERVAL_S):
        rss = memory.sample(cluster.process.pid)
        second = time.monotonic() - memory.started
        figures = "  ".join(f"{name} {value / 2**20:.0f}" for name, value in sorted(rss.items()))
        progress(f"{second:>6.1f} s  kills {len(kills)}  RSS MB: {figures}")


def stored_rows(cluster: QuarryCluster, prefix: str) -> dict[str, dict[str, int]]:
    """Rows of this run per table: all of them, and how many are a repeat of another."""
    found = {}
    for kind, (table, identity) in ROW_IDENTITIES.items():
        [row] = cluster.sql(
            f"SELECT count() AS n, count() - uniqExact({identity}) AS repeats FROM {table} "
            f"WHERE startsWith(host_identifier, '{prefix}-')"
        )
        found[kind] = {"rows": int(row["n"]), "repeats": int(row["repeats"])}
    return found


def settled_rows(cluster: QuarryCluster, prefix: str, accepted: dict[str, int]) -> dict:
    """The stored rows once the spool is replayed: when they match, or stop changing."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    previous: dict | None = None
    while True:
        try:
            found = stored_rows(cluster, prefix)
        except AssertionError:  # ingest restarting after a late kill: `quarry sql` failed
            found = None
        counts = found and {kind: figures["rows"] for kind, figures in found.items()}
        if found and (counts == accepted or found == previous or time.monotonic() > deadline):
            return found
        previous = found
        time.sleep(5)


def soak(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    seed = args.seed or time.time_ns() % 1_000_000_000
    rng = random.Random(seed)
    duration_s = args.minutes * 60
    with quarry_cluster(scratch, args.clickhouse_url) as cluster:
        config_file = scratch / "soak-config.json"
        config_file.write_text(json.dumps(config_for_packs()))
        cluster.cli("config", "set", "-f", str(config_file))
        config = FleetConfig(
            hosts=args.hosts,
            server=cluster.gateway,
            ca_file=str(cluster.ca_cert),
            enroll_secret=cluster.enroll_secret,
            duration_s=duration_s,
            start_period_s=min(30.0, duration_s / 4),
            seed=seed,
            host_identifier_prefix=f"soak{seed}",
        )
        stop = threading.Event()
        kills: list[dict[str, Any]] = []
        memory = MemorySamples()
        workers = [
            threading.Thread(
                target=kill_randomly,
                args=(cluster, stop, rng, tuple(args.kill_every), kills, memory.started),
            ),
            threading.Thread(target=sample_memory, args=(cluster, stop, memory, kills)),
        ]
        progress(f"{args.hosts} hosts for {args.minutes:g} min, seed {seed}")
        for worker in workers:
            worker.start()
        try:
            result: FleetResult = asyncio.run(run_fleet(config))
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        progress("fleet stopped; waiting for the spool to be replayed")
        found = settled_rows(cluster, config.identifier_prefix, result.rows_accepted)
        restarts = cluster.log_text().count("restarting in")
    return verdict(args, seed, result, found, kills, restarts, memory, duration_s)


def verdict(
    args: argparse.Namespace,
    seed: int,
    result: FleetResult,
    found: dict[str, dict[str, int]],
    kills: list[dict[str, Any]],
    restarts: int,
    memory: MemorySamples,
    duration_s: float,
) -> dict[str, Any]:
    stored = {kind: figures["rows"] for kind, figures in found.items()}
    repeats = {kind: figures["repeats"] for kind, figures in found.items()}
    memory_report = memory.verdict(warm_up_s=duration_s * WARM_UP_SHARE)
    checks = {
        "rows_accepted_equal_rows_stored": stored == result.rows_accepted,
        "no_duplicates": not any(repeats.values()),
        "memory_stable": all(figures["stable"] for figures in memory_report.values()),
        "processes_killed": bool(kills),
    }
    return {
        "settings": {**vars(args), "seed": seed},
        "hosts_enrolled": result.hosts_enrolled,
        "kills": kills,
        "restarts_seen": restarts,
        "rows": {"accepted": result.rows_accepted, "stored": stored, "repeats": repeats},
        "requests": {
            name: {"requests": stats["requests"], "errors": stats["errors"]}
            for name, stats in result.endpoints.items()
        },
        "memory": memory_report,
        "checks": checks,
        "passed": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    with tempfile.TemporaryDirectory(prefix="quarry-soak-") as scratch:
        report = soak(args, Path(scratch))
    print(json.dumps(report, indent=2))
    progress("PASSED" if report["passed"] else f"FAILED: {report['checks']}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
