"""`quarry up`: the whole cluster on one machine, as separate supervised processes.

Each service runs as `python -m PACKAGE` (what `quarry serve NAME` becomes:
quarry/serving/service_entry.py) with the same QUARRY_* settings.
The supervisor waits until each listens before starting the next (the gateway
last), prints where everything is and how to connect osquery, restarts a process
that dies, and stops them all on Ctrl-C or SIGTERM. With `--with-prometheus` a local
Prometheus scraping every process is one more supervised child (quarry/cli/local_prometheus.py).

The children die with the supervisor even when it is killed, and the next `quarry up`
finds what an earlier one left running (quarry/cli/up_processes.py, docs/faults.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quarry.cli import local_prometheus
from quarry.cli.cluster_record import PORT_BASE_ENV, write_record
from quarry.cli.osquery_flags import osquery_flags, write_flagfile
from quarry.cli.up_processes import (
    Recorded,
    hold_lock,
    lock_holder,
    read_pid_file,
    record,
    stop_processes,
    write_pid_file,
)
from quarry.encryption.gateway_certificates import tls_files
from quarry.encryption.internal_tls import ensure_shared_certificate
from quarry.encryption.zmq_curve import ensure_curve_keys
from quarry.runtime.embedded_clickhouse import embedded_store_problem
from quarry.runtime.parent_death import die_with_parent
from quarry.runtime.settings import PROCESSES, Settings
from quarry.serving.service_entry import service_command
from quarry.state.directory import (
    chdb_dir,
    ensure_enroll_secret_file,
    internal_tls_dir,
    osquery_flags_file,
    prometheus_dir,
    up_lock_file,
    up_pid_file,
    zmq_curve_dir,
)

SUPERVISOR = "quarry up"  # the supervisor's own entry in the pid file
READY_TIMEOUT_S = 60.0
RESTART_BACKOFF_MAX_S = 30.0
STOP_TIMEOUT_S = 15.0  # each child's, after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class PrometheusOptions:
    """`quarry up --with-prometheus`: where it listens and how often it scrapes."""

    port: int
    scrape_interval_s: float = 15.0


@dataclass
class Child:
    name: str
    ports: list[int]
    command: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


def service_ports(settings: Settings, name: str) -> list[int]:
    """The ports a service must listen on before it counts as started."""
    if name == "ingest":
        return [settings.ingest_port, settings.ingest_zmq_port]
    return [getattr(settings, f"{name}_port")]


def service_child(settings: Settings, name: str) -> Child:
    return Child(name, service_ports(settings, name), service_command(name))


def prometheus_child(settings: Settings, options: PrometheusOptions, out) -> Child | None:
    """The local Prometheus, or None (saying why) when its binary is not installed."""
    binary = local_prometheus.find_binary()
    if binary is None:
        print(
            "quarry up: --with-prometheus: no prometheus binary on PATH or at "
            "/usr/bin/prometheus (Debian: apt-get install prometheus); running without it",
            file=out,
            flush=True,
        )
        return None
    folder = prometheus_dir(settings)
    config = local_prometheus.write_config(settings, folder, options.scrape_interval_s)
    command = local_prometheus.command(
        binary, config, folder / "data", settings.bind_host, options.port
    )
    return Child("prometheus", [options.port], command)


def run_cluster(
    settings: Settings, out=sys.stdout, prometheus: PrometheusOptions | None = None
) -> int:
    # Before anything else, so a second `quarry up` starts nothing (quarry/cli/up_processes.py).
    lock_path = up_lock_file(settings)
    if hold_lock(lock_path) is None:
        print(already_running(settings, lock_holder(lock_path)), file=out, flush=True)
        return 1
    problem = embedded_store_problem(settings)
    if problem:
        print(f"quarry up: {problem}", file=out, flush=True)
        return 1
    pid_file = up_pid_file(settings)
    refusal = take_over_state_dir(settings, pid_file, out)
    if refusal:
        print(refusal, file=out, flush=True)
        return 1
    write_pid_file(pid_file, [record(SUPERVISOR, os.getpid())])
    secret_path = ensure_enroll_secret_file(settings)
    ca_path = tls_files(settings).ca_cert
    ensure_encryption_keys(settings)
    env = {**os.environ, **settings.to_env()}
    children = [service_child(settings, name) for name in PROCESSES]
    if prometheus is not None:
        extra = prometheus_child(settings, prometheus, out)
        children.extend([extra] if extra else [])
    refusal = ports_in_use(children, settings.bind_host)
    if refusal:
        print(refusal, file=out, flush=True)
        pid_file.unlink(missing_ok=True)
        return 1
    write_record(settings, os.environ.get(PORT_BASE_ENV), os.getpid())
    preexec = die_with_parent()

    def start(child: Child) -> None:
        _start(child, env, preexec)
        write_pid_file(pid_file, _recorded(children))

    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for child in children:
            start(child)
            if not _wait_listening(child, settings.bind_host, lambda: stopping):
                print(f"quarry up: {child.name} did not start; see its log above", file=out)
                return 1
        _print_banner(settings, ca_path, secret_path, out, children)
        while not stopping:
            _supervise(children, start, out)
            time.sleep(0.2)
        return 0
    finally:
        _stop_all(children)
        pid_file.unlink(missing_ok=True)


def take_over_state_dir(settings: Settings, pid_file: Path, out) -> str | None:
    """Refuse (the line to print) while another `quarry up` runs on this state directory;
    stop the processes a killed one left running."""
    recorded = read_pid_file(pid_file)
    supervisor = next((p for p in recorded if p.name == SUPERVISOR), None)
    if supervisor is not None and supervisor.alive():
        return already_running(settings, supervisor.pid)
    leftovers = [p for p in recorded if p.alive()]
    if leftovers:
        listed = ", ".join(f"{p.name} (pid {p.pid})" for p in leftovers)
        print(
            f"quarry up: stopping what an earlier quarry up left running: {listed}",
            file=out,
            flush=True,
        )
        stop_processes(leftovers)
    return None


def already_running(settings: Settings, pid: int | None) -> str:
    """The one line refusing a second `quarry up` on a state directory."""
    if pid is None:
        return f"quarry up: already running on {settings.state_dir}; use another --state-dir"
    return (
        f"quarry up: already running on {settings.state_dir} (pid {pid}); "
        f"stop it (Ctrl-C, or kill {pid}) or use another --state-dir"
    )


def ports_in_use(children: list[Child], host: str) -> str | None:
    """Refuse (the line to print) when something listens on a port a child needs already."""
    busy = [
        f"{child.name} :{port}"
        for child in children
        for port in child.ports
        if _port_open(host, port)
    ]
    if not busy:
        return None
    return (
        f"quarry up: already in use: {', '.join(busy)}; another quarry up or another "
        "program listens there: stop it, or choose other ports (--port-base)"
    )


def _recorded(children: list[Child]) -> list[Recorded]:
    running = [record(c.name, c.process.pid) for c in children if c.process is not None]
    return [record(SUPERVISOR, os.getpid()), *running]


def ensure_encryption_keys(settings: Settings) -> None:
    """With internal TLS or CURVE on, make their default files before any child starts.

    Made here, once, because every child reads them at start and none may race to write.
    Files the settings name explicitly are the operator's, and never made.
    """
    if settings.internal_tls and not settings.internal_tls_cert:
        ensure_shared_certificate(internal_tls_dir(settings), [settings.bind_host])
    if settings.zmq_curve:
        ensure_curve_keys(zmq_curve_dir(settings))


def encryption_line(settings: Settings) -> str:
    grpc = "mutual TLS" if settings.internal_tls else "plaintext (loopback)"
    zmq = "CURVE" if settings.zmq_curve else "plaintext (loopback)"
    return f"  internal traffic  gRPC {grpc}, ZeroMQ {zmq}"


def _start(child: Child, env: dict[str, str], preexec: Callable[[], None] | None) -> None:
    # Each child gets its own process group so Ctrl-C reaches the supervisor only; preexec
    # makes it die with the supervisor all the same.
    child.process = subprocess.Popen(
        child.command, env=env, start_new_session=True, preexec_fn=preexec
    )
    child.started_at = time.monotonic()


def _wait_listening(child: Child, host: str, stopping) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        if child.process and child.process.poll() is not None:
            return False
        if all(_port_open(host, port) for port in child.ports):
            return True
        time.sleep(0.1)
    return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _supervise(children: list[Child], start: Callable[[Child], None], out) -> None:
    now = time.monotonic()
    for child in children:
        if child.process is None or child.process.poll() is None:
            continue
        if child.next_start == 0.0:
            backoff = min(2.0**child.restarts, RESTART_BACKOFF_MAX_S)
            if now - child.started_at > 60:
                backoff = 1.0  # it ran a while: a fresh failure, not a crash loop
            child.next_start = now + backoff
            print(
                f"quarry up: {child.name} exited with {child.process.returncode}; "
                f"restarting in {backoff:g} s",
                file=out,
                flush=True,
            )
        elif now >= child.next_start:
            child.restarts += 1
            child.next_start = 0.0
            start(child)


def _stop_all(children: list[Child]) -> None:
    """Stop the children in reverse start order, each gone before the next is asked.

    The reverse of the dependency order: the gateway first, and only once it has exited
    the services it writes to as it drains (its last check-ins go to enroll, its last log
    batches to ingest), so none of them is gone while it still needs them.
    """
    for child in reversed(children):
        process = child.process
        if process is None or process.poll() is not None:
            continue
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _print_banner(
    settings: Settings, ca_path: Path, secret_path: Path, out, children: list[Child]
) -> None:
    flags = osquery_flags(settings, ca_path, secret_path)
    flagfile = write_flagfile(osquery_flags_file(settings), flags)
    store = settings.clickhouse_url or f"embedded ClickHouse (chdb) in {chdb_dir(settings)}"
    host = settings.bind_host
    lines = [
        "",
        "Quarry is running.",
        f"  osquery gateway   https://{settings.public_host}:{settings.gateway_port}",
        f"  enroll service    grpc {host}:{settings.enroll_port}",
        f"  config service    grpc {host}:{settings.config_port}",
        f"  distributed       grpc {host}:{settings.distributed_port}",
        f"  ingest            zmq tcp://{host}:{settings.ingest_zmq_port}, "
        f"grpc {host}:{settings.ingest_port}",
        f"  log store         {store}",
        f"  REST API          https://{settings.public_host}:{settings.api_port}/api/v1   "
        "(docs/api.md)",
        f"  detection         grpc {host}:{settings.detection_port}   (docs/detections.md)",
        encryption_line(settings),
        "  metrics           " + ", ".join(f"{s} :{settings.metrics_port(s)}" for s in PROCESSES),
        *(
            f"  prometheus        http://{host}:{child.ports[0]}   (scrapes every process)"
            for child in children
            if child.name == "prometheus"
        ),
        f"  CA certificate    {ca_path.resolve()}   (osquery --tls_server_certs)",
        f"  enroll secret     {secret_path.resolve()}",
        "",
        f"Connect a node:  osqueryd --flagfile={flagfile.resolve()}",
        "with these flags:",
        *(f"  {flag}" for flag in flags),
        "",
        'Query the logs:   quarry sql "SELECT name, count() FROM quarry.results GROUP BY name"',
        "Stop:             Ctrl-C",
        "",
    ]
    print("\n".join(lines), file=out, flush=True)
