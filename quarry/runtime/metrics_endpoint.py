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
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.exposition import ThreadingWSGIServer

from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
_ready = threading.Event()

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


def prepare_multiprocess_metrics(folder: Path) -> None:
    """Before starting workers: an empty folder for their samples, named in the environment."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)


def start_metrics_endpoint(settings: Settings, service: str) -> int:
    """Serve /metrics on this service's port (a background thread); returns the port."""
    port = settings.metrics_port(service)
    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    serve_in_background(settings.bind_host, port, with_health(make_wsgi_app(registry)))
    log.info("metrics on http://%s:%d/metrics", settings.bind_host, port)
    return port


def mark_ready() -> None:
    """From now on /readyz answers 200: the gRPC server serves (grpc_runtime.serve_grpc)."""
    _ready.set()


def with_health(metrics_app: WsgiApp) -> WsgiApp:
    """The metrics app, with GET /healthz and /readyz answered before it."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
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
