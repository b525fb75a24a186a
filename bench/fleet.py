"""The benchmark's load generator: N simulated osquery hosts in one asyncio process.

Each host is the project's osquery emulator (`tests.emulator.OsqueryNode`) on real HTTPS
keep-alive connections. After enrolling at its moment of the start period it runs osquery's
three loops at once: config fetches, log flushes (its packs' results and some status lines,
see `bench.payloads`) and distributed read/write rounds, each loop starting at a random phase
so the load is smooth. Every call is timed per endpoint; the log rows the server accepted
are counted exactly as ingest stores them, so a run can check ClickHouse holds them all.

    result = await run_fleet(FleetConfig(hosts=2000, server="localhost:8443", ...),
                             live_queries=[(30.0, start_campaign)])
    print(json.dumps(result.to_dict()))

What each flush carries depends on `FleetConfig.payload`: "packs" (bench/payloads.py, two
packs of differential results) or "events" (bench/event_payloads.py, a small event batch
every flush). A measured window (`window_from_s` to `window_until_s`, or to the stop) counts
calls, latencies and rows on their own, and calls `WindowHooks.start()`/`stop()` at its
edges, so a caller can sample server CPU over exactly the same seconds.

Retries keep osquery's logic, but their sleeps are scaled by `retry_time_scale` (0.05 by
default): a host whose request failed retries within seconds instead of osquery's minutes,
so a failing server shows up as errors in this run rather than as silent idle hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import resource
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.event_payloads import EventPayloads
from bench.latency import LatencyHistogram
from bench.payloads import HostPayloads, result_rows
from tests.emulator import (
    DistributedWork,
    HostProfile,
    HttpCounters,
    OsqueryNode,
    QueryResult,
    osquery_ssl_context,
)
from tests.emulator.host_profile import Platform
from tests.emulator.node import ACCELERATED_INTERVAL_S

# asyncio's TLS protocol allocates a read buffer of this size per connection (256 KiB by
# default): 4 connections per host made 2,000 hosts take 2.9 GB. One TLS record is at most
# 16 KiB of plaintext, so 32 KiB reads lose nothing.
TLS_READ_BUFFER_BYTES = 32 * 1024

# The emulator keeps one keep-alive connection per osquery plugin: enroll, config, logger,
# distributed (the enroll one closes after enrolling unless `keep_enroll_connection`); plus
# slack for the process's own files.
CONNECTIONS_PER_HOST = 4
SPARE_FILE_DESCRIPTORS = 256

ENDPOINTS = ("enroll", "config", "log", "distributed_read", "distributed_write")
MAX_LOG_LINES = 1024  # --logger_tls_max_lines
FINAL_SEND_ATTEMPTS = 5  # after the stop, tries to send lines a failed POST left behind
FINAL_SEND_PAUSE_S = 1.0
LIVE_QUERY_MILESTONES = (0.5, 0.9, 0.99, 1.0)

LiveQueryLauncher = Callable[[], Awaitable[str]]


class WindowHooks(Protocol):
    """Called (in a worker thread) as the measured window opens and closes."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class FleetConfig:
    """What to simulate. Intervals default to Fleet's osquery-perf load test."""

    hosts: int
    server: str  # "host:port", osquery's --tls_hostname
    ca_file: str
    enroll_secret: str
    duration_s: float = 60.0
    start_period_s: float = 10.0  # enrollments spread uniformly over this
    config_interval_s: float = 60.0
    log_interval_s: float = 10.0
    distributed_interval_s: float = 10.0
    query_interval_scale: float = 1.0  # multiplies the packs' query intervals
    gzip: bool = False  # --logger_tls_compress
    seed: int = 0
    platform_mix: dict[str, float] = field(default_factory=lambda: {"linux": 1.0})
    # Host identifiers are "<prefix>-<hostname>"; "" means "bench<seed>". Keep it unique per
    # run so rows in a shared ClickHouse can be counted per run.
    host_identifier_prefix: str = ""
    retry_time_scale: float = 0.05
    max_connecting: int = 100  # TLS handshakes in flight at once, so start-up does not stampede
    first_host_index: int = 0
    payload: str = "packs"  # "packs" or "events": what each log flush carries
    # osquery reuses one connection per plugin; enrollment happens once, so a real host
    # holds config, logger and distributed connections. False closes the enroll one.
    keep_enroll_connection: bool = True
    window_from_s: float | None = None  # the measured window, seconds into the run
    window_until_s: float | None = None  # None: until the run stops

    @property
    def identifier_prefix(self) -> str:
        return self.host_identifier_prefix or f"bench{self.seed}"


@dataclass
class EndpointStats:
    """Calls to one endpoint: how many, how many failed, how long they took."""

    requests: int = 0
    errors: int = 0
    retries: int = 0  # osquery's retry attempts inside the calls (each after a sleep)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, seconds: float, ok: bool, retries: int) -> None:
        self.requests += 1
        self.errors += not ok
        self.retries += retries
        self.latency.record(seconds)

    def merge(self, other: EndpointStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.retries += other.retries
        self.latency.merge(other.latency)

    def to_dict(self, wall_s: float) -> dict[str, Any]:
        summary = self.latency.summary_ms()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "retries": self.retries,
            "p50_ms": summary["p50_ms"],
            "p95_ms": summary["p95_ms"],
            "p99_ms": summary["p99_ms"],
            "max_ms": summary["max_ms"],
            "requests_per_s": self.requests / wall_s if wall_s > 0 else 0.0,
        }


@dataclass
class LiveQueryTiming:
    """How fast one live query reached the hosts enrolled when it was launched."""

    campaign_id: str
    launched_at_s: float  # seconds into the run
    hosts_enrolled_at_launch: int
    hosts_answered: int  # every host that wrote an answer, enrolled later or not
    seconds_to: dict[str, float | None]  # "p50", "p90", "p99", "p100": None if never reached
    error: str = ""  # the launcher's exception, if it failed


@dataclass
class MeasuredWindow:
    """What the run counted between the window's edges (calls by the time they ended)."""

    from_s: float
    until_s: float = 0.0
    connections_per_host: float = 0.0  # keep-alive connections held, as the window opened
    stats: dict[str, EndpointStats] = field(
        default_factory=lambda: {endpoint: EndpointStats() for endpoint in ENDPOINTS}
    )
    rows: dict[str, int] = field(default_factory=lambda: {"results": 0, "status": 0})

    def to_dict(self, hosts: Sequence[SimulatedHost]) -> dict[str, Any]:
        window_s = self.until_s - self.from_s
        every = EndpointStats()
        for stats in self.stats.values():
            every.merge(stats)
        return {
            "from_s": round(self.from_s, 3),
            "until_s": round(self.until_s, 3),
            "window_s": round(window_s, 3),
            "host_seconds": sum(host.enrolled_seconds(self.until_s, self.from_s) for host in hosts),
            "endpoints": {name: stats.to_dict(window_s) for name, stats in self.stats.items()},
            "all_requests": every.to_dict(window_s),
            "rows_accepted": dict(self.rows),
            "connections_per_host": round(self.connections_per_host, 2),
        }


@dataclass
class FleetResult:
    config: FleetConfig
    wall_s: float  # from start until the stop (the measured window)
    drain_s: float  # waiting for calls in flight at the stop
    hosts_enrolled: int
    reenrollments: int
    host_seconds: float  # sum over hosts of the time they were enrolled
    endpoints: dict[str, dict[str, Any]]
    rows_accepted: dict[str, int]  # {"results": n, "status": n}, what ClickHouse must hold
    lines_unacknowledged: int  # log lines still buffered when the hosts closed (should be 0)
    live_queries: list[LiveQueryTiming]
    emulator: dict[str, int]  # HttpCounters: requests, resends, connections, failures...
    client_cpu_s: float  # CPU this load generator used (its whole process), for the cost model
    window: dict[str, Any] | None = None  # MeasuredWindow.to_dict(), if a window was measured

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def errors(self) -> int:
        return sum(stats["errors"] for stats in self.endpoints.values())


class FleetRun:
    """State shared by every simulated host of one run."""

    def __init__(self, config: FleetConfig, stop: asyncio.Event) -> None:
        self.config = config
        self.stop = stop
        self.started = time.perf_counter()
        self.stats = {endpoint: EndpointStats() for endpoint in ENDPOINTS}
        self.counters = HttpCounters()
        self.ssl_context = osquery_ssl_context(config.ca_file)
        self.connecting = asyncio.Semaphore(config.max_connecting)
        self.rows = {"results": 0, "status": 0}
        # campaign id -> host index -> seconds into the run its answer was stored
        self.answers: dict[str, dict[int, float]] = {}
        self.window: MeasuredWindow | None = None
        self.window_open = False

    def record(self, endpoint: str, seconds: float, ok: bool, retries: int) -> None:
        self.stats[endpoint].record(seconds, ok, retries)
        if self.window_open:
            assert self.window is not None
            self.window.stats[endpoint].record(seconds, ok, retries)

    def add_rows(self, table: str, rows: int) -> None:
        self.rows[table] += rows
        if self.window_open:
            assert self.window is not None
            self.window.rows[table] += rows

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record_answers(self, host_index: int, campaign_ids: Sequence[str]) -> None:
        now = self.elapsed()
        for campaign_id in campaign_ids:
            self.answers.setdefault(campaign_id, {}).setdefault(host_index, now)

    async def pause(self, seconds: float) -> bool:
        """Sleep unless the run stops first; True if it is still running."""
        if seconds > 0 and not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        return not self.stop.is_set()


@dataclass(kw_only=True)
class MeasuredNode(OsqueryNode):
    """An emulated osqueryd whose remote calls are timed into the run's statistics."""

    run: FleetRun | None = None
    host_index: int = 0

    async def fetch_config(self) -> dict[str, Any] | None:
        started, retries = time.perf_counter(), len(self.retry_sleeps)
        config = await super().fetch_config()
        self.record_call("config", started, config is not None, retries)
        return config

    async def send_logs(
        self, log_type: str, records: Sequence[Any], compress: bool | None = None
    ) -> bool:
        started, retries = time.perf_counter(), len(self.retry_sleeps)
        ok = await super().send_logs(log_type, records, compress)
        self.record_call("log", started, ok, retries)
        return ok

    async def distributed_read(self) -> DistributedWork | None:
        started, retries = time.perf_counter(), len(self.retry_sleeps)
        work = await super().distributed_read()
        self.record_call("distributed_read", started, work is not None, retries)
        return work

    async def distributed_write(self, results: Mapping[str, QueryResult]) -> bool:
        started, retries = time.perf_counter(), len(self.retry_sleeps)
        ok = await super().distributed_write(results)
        self.record_call("distributed_write", started, ok, retries)
        if ok and self.run is not None:
            self.run.record_answers(self.host_index, list(results))
        return ok

    def record_call(self, endpoint: str, started: float, ok: bool, retries_before: int) -> None:
        if self.run is not None:
            seconds = time.perf_counter() - started
            retries = len(self.retry_sleeps) - retries_before
            self.run.record(endpoint, seconds, ok, retries)


class SimulatedHost:
    """One osqueryd: enroll, then config, logger and distributed loops until the run stops."""

    def __init__(self, run: FleetRun, index: int, start_offset_s: float) -> None:
        config = run.config
        self.run = run
        self.index = index
        self.start_offset_s = start_offset_s
        self.rng = random.Random(f"fleet:{config.seed}:{index}")
        profile = HostProfile.make(index, platform_for(config, index), seed=config.seed)
        self.node = MeasuredNode(
            server=config.server,
            enroll_secret=config.enroll_secret,
            profile=profile,
            host_identifier=f"{config.identifier_prefix}-{profile.hostname}",
            logger_tls_compress=config.gzip,
            retry_time_scale=config.retry_time_scale,
            ssl_context=run.ssl_context,
            counters=run.counters,
            run=run,
            host_index=index,
        )
        self.payloads: HostPayloads | EventPayloads | None = None
        self.pending: dict[str, list[dict[str, Any]]] = {"result": [], "status": []}
        self.enrolled_at: float | None = None  # seconds into the run

    async def run_until_stopped(self) -> None:
        try:
            if await self.run.pause(self.start_offset_s) and await self.enroll():
                await asyncio.gather(self.config_loop(), self.log_loop(), self.distributed_loop())
                await self.send_unacknowledged()
        finally:
            await self.node.aclose()

    async def enroll(self) -> bool:
        """Enroll (osquery's backoff included); a host that gives up tries again later."""
        while not self.run.stop.is_set():
            async with self.run.connecting:
                started, retries = time.perf_counter(), len(self.node.retry_sleeps)
                key = await self.node.get_node_key()
                self.node.record_call("enroll", started, bool(key), retries)
            if key:
                self.enrolled_at = self.run.elapsed()
                self.payloads = self.host_payloads()
                if not self.run.config.keep_enroll_connection:
                    self.node.close_connection("enroll")
                return True
            await self.run.pause(self.run.config.config_interval_s)
        return False

    def host_payloads(self) -> HostPayloads | EventPayloads:
        config, profile, identifier = self.run.config, self.node.profile, self.node.host_identifier
        if config.payload == "events":
            return EventPayloads(
                profile,
                identifier,
                seed=config.seed,
                started_at=time.time(),
                log_interval_s=config.log_interval_s,
            )
        return HostPayloads(
            profile,
            identifier,
            seed=config.seed,
            started_at=time.time(),
            interval_scale=config.query_interval_scale,
        )

    async def config_loop(self) -> None:
        # osquery fetches its config right after enrolling, then every config_refresh.
        async with self.run.connecting:
            await self.node.fetch_config()
        while await self.run.pause(self.run.config.config_interval_s):
            await self.node.fetch_config()

    async def log_loop(self) -> None:
        interval = self.run.config.log_interval_s
        if not await self.run.pause(self.rng.uniform(0, interval)):
            return
        async with self.run.connecting:
            await self.flush_logs()
        while await self.run.pause(interval):
            await self.flush_logs()

    async def flush_logs(self) -> None:
        """One forwarder tick: queue what the scheduler produced, send results then status."""
        assert self.payloads is not None
        now = time.time()
        self.pending["result"] += self.payloads.due_records(now)
        self.pending["status"] += self.payloads.status_records(now)
        await self.send_pending()

    async def send_pending(self) -> None:
        """Send what the buffer holds, results then status, up to osquery's max lines each."""
        for log_type, table in (("result", "results"), ("status", "status")):
            batch = self.pending[log_type][:MAX_LOG_LINES]
            if not batch:
                continue
            if await self.node.send_logs(log_type, batch):
                # osquery deletes a batch only once the server accepted it.
                del self.pending[log_type][: len(batch)]
                rows = sum(map(result_rows, batch)) if table == "results" else len(batch)
                self.run.add_rows(table, rows)

    async def send_unacknowledged(self) -> None:
        """After the stop, what a failed POST left in the buffer, as osquery's next ticks would.

        A POST whose answer the host never got may still have been stored, and its lines go
        again (merged with later ones when they fit): the server must store them once. Sent
        until acknowledged (a few tries), every row the server stored has been acknowledged,
        so the run's rows check can demand equality.
        """
        for _ in range(FINAL_SEND_ATTEMPTS):
            if not any(self.pending.values()):
                return
            await self.send_pending()
            if any(self.pending.values()):
                await asyncio.sleep(FINAL_SEND_PAUSE_S)

    async def distributed_loop(self) -> None:
        interval = self.run.config.distributed_interval_s
        if not await self.run.pause(self.rng.uniform(0, interval)):
            return
        async with self.run.connecting:
            await self.node.run_distributed_once()
        while await self.run.pause(self.distributed_pause_s()):
            await self.node.run_distributed_once()

    def distributed_pause_s(self) -> float:
        """osquery's pause: 5 s while `accelerate` holds, else the interval (if shorter, kept)."""
        interval = self.run.config.distributed_interval_s
        if self.node.clock() <= self.node.accelerated_until:
            return min(ACCELERATED_INTERVAL_S, interval)
        return interval

    def enrolled_seconds(self, ended_at: float, since: float = 0.0) -> float:
        """Seconds this host was enrolled between `since` and `ended_at` (into the run)."""
        if self.enrolled_at is None:
            return 0.0
        return max(0.0, ended_at - max(self.enrolled_at, since))


def ensure_file_descriptors(needed: int) -> None:
    """Raise the soft open-file limit to `needed`, or fail before any host starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(
            f"{needed} open files needed ({CONNECTIONS_PER_HOST} connections per host) but the"
            f" hard limit is {hard}: raise it (ulimit -Hn) or split the hosts over processes"
            " (FleetConfig.first_host_index)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def platform_for(config: FleetConfig, index: int) -> Platform:
    """Host `index`'s platform, drawn from `platform_mix` (deterministic per seed)."""
    platforms, weights = zip(*config.platform_mix.items(), strict=True)
    return random.Random(f"platform:{config.seed}:{index}").choices(platforms, weights)[0]


def start_offsets(config: FleetConfig) -> list[float]:
    """Each host's enrollment moment, uniform over the start period, in a shuffled order."""
    rng = random.Random(f"starts:{config.seed}")
    return [rng.uniform(0, config.start_period_s) for _ in range(config.hosts)]


async def run_fleet(
    config: FleetConfig,
    live_queries: Sequence[tuple[float, LiveQueryLauncher]] = (),
    stop: asyncio.Event | None = None,
    hooks: WindowHooks | None = None,
) -> FleetResult:
    """Simulate the fleet for `config.duration_s` (or until `stop` is set) and report.

    Each live query launcher is awaited at its second into the run and returns the campaign
    id it started; hosts answer it through their distributed loops.
    """
    stop = stop or asyncio.Event()
    ensure_file_descriptors(config.hosts * CONNECTIONS_PER_HOST + SPARE_FILE_DESCRIPTORS)
    sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, TLS_READ_BUFFER_BYTES)
    cpu_started = time.process_time()
    run = FleetRun(config, stop)
    offsets = start_offsets(config)
    hosts = [
        SimulatedHost(run, config.first_host_index + i, offset) for i, offset in enumerate(offsets)
    ]
    host_tasks = [asyncio.create_task(host.run_until_stopped()) for host in hosts]
    launches: list[tuple[float, str, str]] = []
    launcher = asyncio.create_task(launch_live_queries(run, live_queries, launches))
    window = asyncio.create_task(measure_window(run, hosts, hooks))
    await run.pause(config.duration_s)
    stop.set()
    wall_s = run.elapsed()
    await asyncio.gather(launcher, window, *host_tasks)
    drain_s = run.elapsed() - wall_s
    return FleetResult(
        config=config,
        wall_s=wall_s,
        drain_s=drain_s,
        hosts_enrolled=sum(host.enrolled_at is not None for host in hosts),
        reenrollments=sum(max(0, host.node.enrollments - 1) for host in hosts),
        host_seconds=sum(host.enrolled_seconds(wall_s) for host in hosts),
        endpoints={name: stats.to_dict(wall_s) for name, stats in run.stats.items()},
        rows_accepted=dict(run.rows),
        lines_unacknowledged=sum(len(lines) for host in hosts for lines in host.pending.values()),
        live_queries=[live_query_timing(run, hosts, *launch) for launch in launches],
        emulator=dataclasses.asdict(run.counters),
        client_cpu_s=time.process_time() - cpu_started,
        window=run.window.to_dict(hosts) if run.window and run.window.until_s else None,
    )


async def measure_window(
    run: FleetRun, hosts: Sequence[SimulatedHost], hooks: WindowHooks | None
) -> None:
    """Open the measured window at `window_from_s`, close it at `window_until_s` or the stop.

    The hooks run in a thread (they read /proc and /metrics), and the window's counting
    starts and ends right next to them, so both cover the same seconds.
    """
    config = run.config
    if config.window_from_s is None or not await run.pause(config.window_from_s - run.elapsed()):
        return
    if hooks is not None:
        await asyncio.to_thread(hooks.start)
    enrolled = [host.node for host in hosts if host.enrolled_at is not None]
    held = sum(node.open_connections for node in enrolled) / len(enrolled) if enrolled else 0.0
    run.window = MeasuredWindow(from_s=run.elapsed(), connections_per_host=held)
    run.window_open = True
    if config.window_until_s is not None:
        await run.pause(config.window_until_s - run.elapsed())
    else:
        await run.stop.wait()
    run.window_open = False
    run.window.until_s = run.elapsed()
    if hooks is not None:
        await asyncio.to_thread(hooks.stop)


async def launch_live_queries(
    run: FleetRun,
    live_queries: Sequence[tuple[float, LiveQueryLauncher]],
    launches: list[tuple[float, str, str]],
) -> None:
    """Call each launcher at its time; note (launch second, campaign id, error)."""
    for at_s, launch in sorted(live_queries, key=lambda item: item[0]):
        if not await run.pause(at_s - run.elapsed()):
            return
        launched_at = run.elapsed()
        try:
            campaign_id = await launch()
        except Exception as error:  # the report says why; the hosts keep running
            launches.append((launched_at, "", f"{type(error).__name__}: {error}"))
            continue
        launches.append((launched_at, campaign_id, ""))


def live_query_timing(
    run: FleetRun, hosts: Sequence[SimulatedHost], launched_at: float, campaign_id: str, error: str
) -> LiveQueryTiming:
    answers = run.answers.get(campaign_id, {}) if campaign_id else {}
    enrolled = [
        host.index
        for host in hosts
        if host.enrolled_at is not None and host.enrolled_at <= launched_at
    ]
    times = sorted(answers[index] for index in enrolled if index in answers)
    seconds_to: dict[str, float | None] = {}
    for share in LIVE_QUERY_MILESTONES:
        needed = math.ceil(share * len(enrolled))
        reached = enrolled and len(times) >= needed
        seconds_to[f"p{round(share * 100)}"] = (
            round(times[needed - 1] - launched_at, 3) if reached else None
        )
    return LiveQueryTiming(
        campaign_id=campaign_id,
        launched_at_s=round(launched_at, 3),
        hosts_enrolled_at_launch=len(enrolled),
        hosts_answered=len(answers),
        seconds_to=seconds_to,
        error=error,
    )
