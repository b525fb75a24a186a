"""The /metrics endpoint every Quarry process serves for Prometheus.

A process that forks workers (the gateway with QUARRY_GATEWAY_WORKERS > 1) uses
prometheus-client's multiprocess mode: each worker writes its samples to files in a
shared folder and the parent's endpoint sums them, so Prometheus sees one coherent
set rather than one worker's fragment per scrape.

The same port answers GET /healthz with 200 "ok": a liveness target that needs no gRPC
client (Kubernetes httpGet probes, docker compose healthchecks). It says the process is
up, nothing more. GET /readyz answers 200 "ready" once the process's gRPC server has
started (it starts only after the store is open), 503 before: the readiness probe of the
gRPC services, since the kubelet's own gRPC probe cannot speak TLS and the services' ports
may require mutual TLS (QUARRY_INTERNAL_TLS). The gateway has no gRPC server, so its /readyz
stays 503; its readiness is its HTTPS /healthz.

GET /livez answers 200 only while the process's event loop turns (quarry/runtime/
loop_watch.py): the liveness probe, which /healthz cannot be since this thread answers it
whatever the loop does. A gateway with workers answers for the oldest turn among them.

Besides the metrics of the process's modules every endpoint exports quarry_build_info
and, in multiprocess mode, the process_* figures summed over the parent and its workers
(prometheus-client's own process collector sees one process, and the workers' registries
are not scraped), with python_info and the parent's python_gc_*.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from quarry.runtime.loop_watch import LAST_TURN_METRIC, last_turn
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
LIVE_PATH = "/livez"
_ready = threading.Event()

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
# Whether the process's loop turns, and the line /livez says it with.
Liveness = Callable[[], tuple[bool, str]]


def prepare_multiprocess_metrics(folder: Path) -> None:
    """Before starting workers: an empty folder for their samples, named in the environment."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)


def start_metrics_endpoint(settings: Settings, service: str) -> int:
    """Serve /metrics on this service's port (a background thread); returns the port."""
    port = settings.metrics_port(service)
    workers = bool(os.environ.get(MULTIPROC_ENV))
    registry = workers_registry() if workers else REGISTRY
    with contextlib.suppress(ValueError):  # registered by an earlier endpoint of this process
        registry.register(BUILD_INFO)
    alive = loop_liveness(settings.liveness_window_s, workers)
    serve_in_background(settings.bind_host, port, with_health(make_wsgi_app(registry), alive))
    log.info("metrics on http://%s:%d/metrics", settings.bind_host, port)
    return port


def workers_registry() -> CollectorRegistry:
    """The parent's registry in multiprocess mode: the workers' files, the process tree."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(ProcessTreeCollector())
    registry.register(PLATFORM_COLLECTOR)
    registry.register(GC_COLLECTOR)
    return registry


class BuildInfo(Collector):
    """quarry_build_info{version}: always 1; the version is the installed package's."""

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "quarry_build_info",
            "The Quarry version this process runs (always 1).",
            labels=["version"],
        )
        info.add_metric([package_version()], 1)
        yield info


BUILD_INFO = BuildInfo()


def package_version() -> str:
    try:
        return importlib.metadata.version("quarry")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# process_* figures that add up over processes; the others are the parent's.
SUMMED = {
    "process_cpu_seconds": CounterMetricFamily,
    "process_resident_memory_bytes": GaugeMetricFamily,
    "process_virtual_memory_bytes": GaugeMetricFamily,
    "process_open_fds": GaugeMetricFamily,
}


class ProcessTreeCollector(Collector):
    """process_* of this process plus its children (the gateway's workers), as one."""

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, float] = dict.fromkeys(SUMMED, 0.0)
        helps: dict[str, str] = {}
        for pid in [os.getpid(), *child_pids(os.getpid())]:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                if family.name in SUMMED:
                    totals[family.name] += sum(sample.value for sample in family.samples)
                    helps[family.name] = family.documentation
                elif pid == os.getpid():
                    yield family
        for name, kind in SUMMED.items():
            if name in helps:
                yield kind(
                    name, helps[name] + " (this process and its workers)", value=totals[name]
                )


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux /proc; none elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if len(fields) > 1 and int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def loop_liveness(window_s: float, workers: bool) -> Liveness:
    """/livez's check: this process's loop, or with workers the oldest of theirs."""

    def check() -> tuple[bool, str]:
        turned = last_turn()
        if turned is None and workers:
            turned = oldest_worker_turn()
        if turned is None:
            return True, "starting: the event loop is not watched yet"
        age = time.time() - turned
        if age > window_s:
            return False, f"event loop stuck: last turned {age:.1f} s ago (limit {window_s:g} s)"
        return True, f"event loop turned {age:.1f} s ago"

    return check


def oldest_worker_turn() -> float | None:
    """The oldest last turn among the live workers (their multiprocess files)."""
    for family in multiprocess.MultiProcessCollector(None).collect():
        if family.name == LAST_TURN_METRIC:
            values = [sample.value for sample in family.samples]
            return min(values) if values else None
    return None


def mark_ready() -> None:
    """From now on /readyz answers 200: the gRPC server serves (grpc_runtime.serve_grpc)."""
    _ready.set()


def with_health(metrics_app: WsgiApp, alive: Liveness | None = None) -> WsgiApp:
    """The metrics app, with GET /healthz, /readyz and /livez answered before it."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == LIVE_PATH and alive is not None:
            turning, line = alive()
            status = "200 OK" if turning else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain")])
            return [line.encode() + b"\n"]
        if path == READY_PATH:
            ready = _ready.is_set()
            start_response(
                "200 OK" if ready else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"ready\n" if ready else b"starting\n"]
        return metrics_app(environ, start_response)

    return app


class _QuietRequestHandler(WSGIRequestHandler):
    """Scrapes and probes every few seconds would flood the log otherwise."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_in_background(host: str, port: int, app: WsgiApp) -> None:
    """What prometheus_client.start_http_server does, with our app (IPv4 or IPv6 host)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    httpd = make_server(host, port, app, server_class, handler_class=_QuietRequestHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
