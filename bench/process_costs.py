"""What the server side costs during a run: CPU seconds and memory per process, from /proc.

The load generator shares the machine, so the benchmark cannot use wall-clock CPU figures;
it reads each server process's own counters instead. `ProcessSampler` follows named
processes (the Quarry services and ClickHouse) together with their descendants (uvicorn's
worker processes): `start()` notes their CPU time, a background thread samples their RSS
every half second, and `stop()` returns CPU seconds used and RSS (peak and final) per name.
The functions at the end turn those into the cost model's figures.

Linux only: everything comes from /proc/PID/stat and /proc/PID/status.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from quarry.serving.service_entry import service_of

PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL_S = 0.5
HOSTS_PER_RSS_UNIT = 10_000  # memory is reported per 10k enrolled hosts
QUARRY_SERVICES = ("gateway", "enroll", "config", "distributed", "ingest")
# The kernel truncates comm to 15 characters.
CLICKHOUSE_COMMS = frozenset({"clickhouse-serv", "clickhouse-server", "clickhouse"})
TCP_LISTEN_STATE = "0A"

# A process is identified by (pid, start time in ticks), so a reused pid is a new process.
ProcessId = tuple[int, int]


@dataclass(frozen=True)
class ProcessStat:
    """The few fields of /proc/PID/stat the cost model needs."""

    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    start_ticks: int

    @property
    def identity(self) -> ProcessId:
        return (self.pid, self.start_ticks)


def read_stat(pid: int) -> ProcessStat | None:
    """One process's stat line, or None if it has gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    # cutime/cstime hold the CPU of children that exited and were reaped during the run
    # (a restarted worker); live children are counted on their own, so nothing twice.
    return ProcessStat(pid, int(fields[1]), utime + stime + cutime + cstime, int(fields[19]))


def all_stats() -> dict[int, ProcessStat]:
    stats = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def process_tree(root: int, stats: dict[int, ProcessStat]) -> list[ProcessStat]:
    """The root process and all its descendants, among the given stats."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        if pid in stats:
            tree.append(stats[pid])
            pending.extend(children.get(pid, []))
    return tree


def read_rss_bytes(pid: int) -> int:
    """VmRSS of one process; 0 if it has gone (or is a zombie, which has none)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    return 0


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    if not raw:
        return []  # a kernel thread or a zombie
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


@dataclass
class ProcessCost:
    """What one named process (with its descendants) used between start() and stop()."""

    cpu_s: float = 0.0
    rss_max_bytes: int = 0
    rss_end_bytes: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "rss_max_bytes": self.rss_max_bytes,
            "rss_end_bytes": self.rss_end_bytes,
        }


@dataclass
class TrackedTree:
    """Running counters for one named process tree."""

    root: int
    start_ticks: dict[ProcessId, int] = field(default_factory=dict)
    last_ticks: dict[ProcessId, int] = field(default_factory=dict)
    rss_max_bytes: int = 0
    rss_end_bytes: int = 0

    def used_ticks(self) -> int:
        # A process born during the run started at 0; one that died keeps its last reading.
        return sum(ticks - self.start_ticks.get(pid, 0) for pid, ticks in self.last_ticks.items())


class ProcessSampler:
    """CPU and RSS of named process trees over a run; see the module docstring.

    Use as `sampler.start()` ... `costs = sampler.stop()`, or as a context manager whose
    `costs` attribute is filled on exit.
    """

    def __init__(self, pids: dict[str, int], interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.trees = {name: TrackedTree(root=pid) for name, pid in pids.items()}
        self.interval_s = interval_s
        self.costs: dict[str, ProcessCost] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        stats = all_stats()
        for tree in self.trees.values():
            members = process_tree(tree.root, stats)
            tree.start_ticks = {stat.identity: stat.cpu_ticks for stat in members}
        self._sample()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, ProcessCost]:
        """Per name: CPU seconds used since start(), peak and final RSS of its tree."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.costs = {
            name: ProcessCost(
                cpu_s=tree.used_ticks() / CLOCK_TICKS_PER_S,
                rss_max_bytes=tree.rss_max_bytes,
                rss_end_bytes=tree.rss_end_bytes,
            )
            for name, tree in self.trees.items()
        }
        return self.costs

    def __enter__(self) -> ProcessSampler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _sample_until_stopped(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        stats = all_stats()
        with self._lock:
            for tree in self.trees.values():
                members = process_tree(tree.root, stats)
                for stat in members:
                    tree.last_ticks[stat.identity] = stat.cpu_ticks
                rss = sum(read_rss_bytes(stat.pid) for stat in members)
                tree.rss_end_bytes = rss
                tree.rss_max_bytes = max(tree.rss_max_bytes, rss)


def total_cost(costs: dict[str, ProcessCost]) -> ProcessCost:
    """The sum over all named processes (peak RSS summed per process, an upper bound)."""
    return ProcessCost(
        cpu_s=sum(cost.cpu_s for cost in costs.values()),
        rss_max_bytes=sum(cost.rss_max_bytes for cost in costs.values()),
        rss_end_bytes=sum(cost.rss_end_bytes for cost in costs.values()),
    )


def costs_report(costs: dict[str, ProcessCost]) -> dict[str, dict[str, float | int]]:
    """JSON-ready: every name's figures, plus "total"."""
    report = {name: cost.as_dict() for name, cost in costs.items()}
    report["total"] = total_cost(costs).as_dict()
    return report


# --- the cost model's derived figures -----------------------------------------------------


def cpu_s_per_host_second(server_cpu_s: float, hosts: int, duration_s: float) -> float:
    """Server CPU seconds spent per simulated host per second of the run."""
    if hosts <= 0 or duration_s <= 0:
        raise ValueError("hosts and duration_s must be positive")
    return server_cpu_s / (hosts * duration_s)


def hosts_per_core(cpu_per_host_second: float) -> float:
    """How many hosts one fully busy core carries at the run's check-in intervals."""
    if cpu_per_host_second <= 0:
        return float("inf")
    return 1.0 / cpu_per_host_second


def rss_per_10k_hosts(rss_bytes: int, hosts: int) -> float:
    """Memory per 10,000 enrolled hosts (the whole RSS, fixed overhead included)."""
    if hosts <= 0:
        raise ValueError("hosts must be positive")
    return rss_bytes * HOSTS_PER_RSS_UNIT / hosts


# --- finding the processes ----------------------------------------------------------------


def find_quarry_service_pids(supervisor_pid: int) -> dict[str, int]:
    """The service processes a `quarry up` started: {"gateway": pid, ...}.

    Each runs as `python -m PACKAGE` (quarry/serving/service_entry.py), a direct child of the
    supervisor.
    """
    services = {}
    for stat in all_stats().values():
        if stat.ppid != supervisor_pid:
            continue
        service = service_of(read_cmdline(stat.pid))
        if service is not None:
            services[service] = stat.pid
    return services


def find_clickhouse_pid(port: int | None = None, cmdline_contains: str = "") -> int:
    """A running clickhouse-server's pid; raises LookupError when none matches.

    `port` picks the one listening on that TCP port (any of its ports), `cmdline_contains`
    the one whose command line holds the text (such as its config file's path).
    """
    candidates = [pid for pid in all_stats() if is_clickhouse_server(pid)]
    if cmdline_contains:
        candidates = [pid for pid in candidates if cmdline_contains in " ".join(read_cmdline(pid))]
    if port is not None:
        inodes = listening_socket_inodes(port)
        candidates = [pid for pid in candidates if owns_any_socket(pid, inodes)]
    if not candidates:
        raise LookupError(f"no clickhouse-server process (port={port}, {cmdline_contains!r})")
    return min(candidates)  # the oldest, when a server forked helpers


def is_clickhouse_server(pid: int) -> bool:
    try:
        comm = (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return False
    if comm in CLICKHOUSE_COMMS:
        argv = read_cmdline(pid)
        # The multi-tool binary `clickhouse` also runs clients; only its server counts.
        return comm != "clickhouse" or "server" in argv[1:2]
    return False


def listening_socket_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on this port (IPv4 and IPv6)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == TCP_LISTEN_STATE:
                inodes.add(fields[9])
    return inodes


def owns_any_socket(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        descriptors = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in wanted:
                return True
        except OSError:
            continue
    return False
