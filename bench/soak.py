"""`python -m bench.soak` (what `make soak` runs): a long run with random faults.

A cluster started by `quarry up`, a simulated osquery fleet (bench/fleet.py) on it behind a
relay that can lose answers (tests/lossy_proxy.py), and every 30-90 s a random fault
(`--faults`): a SIGKILL to a random Quarry service, which `quarry up` restarts (`kill`);
ingest stopped (SIGSTOP) for twice the gateway's wait, so POSTs time out while their batches
are stored later (`stall`); or a third of the gateway's answers lost for 20 s (`lossy`). The
last two make osquery send lines again merged with newer ones, as it does after any lost
answer (docs/adr/0012-line-level-exactly-once.md). Every service's memory is sampled from
/proc while it runs. At the end it checks the fault matrix's promise
(docs/faults.md): the log rows ClickHouse holds equal the rows osquery was told were stored,
no row is stored twice, and no process's memory kept growing. Exit status 0 only if all hold.

Not a test: it takes 10 minutes by default (`--minutes`), and pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
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
from tests.lossy_proxy import LossyProxy
from tests.quarry_cluster import QuarryCluster, quarry_cluster

SAMPLE_INTERVAL_S = 10.0
WARM_UP_SHARE = 0.2  # a process's memory is judged once it has been up this share of the run
MAX_MEMORY_GROWTH = 0.5  # the soak's verdict, not a unit-test threshold
SETTLE_TIMEOUT_S = 180.0  # for the spool to be replayed after the fleet stops
FAULTS = ("kill", "stall", "lossy")
ACK_TIMEOUT_S = 3.0  # the gateway's wait for ingest (log_ack_timeout_s), short for stalls
LOSSY_S = 20.0
LOSS = 0.3
QUIET_END_S = 30.0  # no fault starts this close to the end: the fleet then drains

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
        help="seconds between faults, drawn uniformly",
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated faults to draw from: {', '.join(FAULTS)}",
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


@dataclass
class Faults:
    """What the fault thread may do, and the relay in front of the gateway."""

    cluster: QuarryCluster
    proxy: LossyProxy
    kinds: list[str]
    rng: random.Random
    every: tuple[float, float]
    last_start_s: float
    started: float
    done: list[dict[str, Any]] = field(default_factory=list)


def inject_randomly(faults: Faults, stop: threading.Event) -> None:
    """A random fault at random intervals until stopped, none near the end of the run."""
    while not stop.wait(faults.rng.uniform(*faults.every)):
        second = round(time.monotonic() - faults.started, 1)
        if second > faults.last_start_s:
            continue
        kind = faults.rng.choice(faults.kinds)
        what = INJECT[kind](faults, stop)
        if what:
            faults.done.append({"at_s": second, "fault": kind, "what": what})
            progress(f"{second:>6} s  {kind}: {what} (fault {len(faults.done)})")


def kill_one(faults: Faults, stop: threading.Event) -> str:
    """SIGKILL a random service; `quarry up` restarts it."""
    service = faults.rng.choice(QUARRY_SERVICES)
    try:
        faults.cluster.kill_service(service)
    except LookupError:  # still restarting from the previous kill
        return ""
    return f"SIGKILL {service}"


def stall_ingest(faults: Faults, stop: threading.Event) -> str:
    """SIGSTOP ingest for twice the gateway's wait, then SIGCONT."""
    try:
        pid = faults.cluster.service_pid("ingest")
    except LookupError:
        return ""
    os.kill(pid, signal.SIGSTOP)
    try:
        stop.wait(ACK_TIMEOUT_S * 2)
    finally:
        os.kill(pid, signal.SIGCONT)
    return f"ingest stopped {ACK_TIMEOUT_S * 2:g} s"


def lose_answers(faults: Faults, stop: threading.Event) -> str:
    """Lose a share of the gateway's answers for a while."""
    faults.proxy.loss = LOSS
    try:
        stop.wait(LOSSY_S)
    finally:
        faults.proxy.loss = 0
    return f"{faults.proxy.lost_answers} answers lost so far"


INJECT = {"kill": kill_one, "stall": stall_ingest, "lossy": lose_answers}


def sample_memory(
    cluster: QuarryCluster, stop: threading.Event, memory: MemorySamples, kills: list
) -> None:
    assert cluster.process is not None
    while not stop.wait(SAMPLE_INTERVAL_S):
        rss = memory.sample(cluster.process.pid)
        second = time.monotonic() - memory.started
        figures = "  ".join(f"{name} {value / 2**20:.0f}" for name, value in sorted(rss.items()))
        progress(f"{second:>6.1f} s  faults {len(kills)}  RSS MB: {figures}")


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
    kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    if not kinds or set(kinds) - set(FAULTS):
        raise SystemExit(f"--faults takes some of {', '.join(FAULTS)}, not {args.faults!r}")
    extra_env = {"QUARRY_LOG_ACK_TIMEOUT_S": str(ACK_TIMEOUT_S)}
    with quarry_cluster(scratch, args.clickhouse_url, extra_env) as cluster:
        config_file = scratch / "soak-config.json"
        config_file.write_text(json.dumps(config_for_packs()))
        cluster.cli("config", "set", "-f", str(config_file))
        memory = MemorySamples()
        proxy = LossyProxy(cluster.port_base, loss=0, seed=seed)
        last_start_s = duration_s - QUIET_END_S
        faults = Faults(
            cluster, proxy, kinds, rng, tuple(args.kill_every), last_start_s, memory.started
        )
        stop = threading.Event()
        workers = [
            threading.Thread(target=inject_randomly, args=(faults, stop)),
            threading.Thread(target=sample_memory, args=(cluster, stop, memory, faults.done)),
        ]
        progress(f"{args.hosts} hosts for {args.minutes:g} min, faults {kinds}, seed {seed}")

        async def fleet_behind_the_relay() -> FleetResult:
            config = FleetConfig(
                hosts=args.hosts,
                server=f"localhost:{await proxy.start()}",
                ca_file=str(cluster.ca_cert),
                enroll_secret=cluster.enroll_secret,
                duration_s=duration_s,
                start_period_s=min(30.0, duration_s / 4),
                seed=seed,
                host_identifier_prefix=f"soak{seed}",
            )
            for worker in workers:
                worker.start()
            try:
                return await run_fleet(config)
            finally:
                stop.set()
                await proxy.close()

        try:
            result = asyncio.run(fleet_behind_the_relay())
        finally:
            stop.set()
            for worker in workers:
                if worker.is_alive():
                    worker.join()
        progress("fleet stopped; waiting for the spool to be replayed")
        found = settled_rows(cluster, f"soak{seed}", result.rows_accepted)
        restarts = cluster.log_text().count("restarting in")
    return verdict(args, seed, result, found, faults.done, restarts, memory, duration_s)


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
        "faults_injected": bool(kills),
    }
    return {
        "settings": {**vars(args), "seed": seed},
        "hosts_enrolled": result.hosts_enrolled,
        "faults": kills,
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
