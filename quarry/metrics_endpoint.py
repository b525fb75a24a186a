"""The /metrics endpoint every Quarry process serves for Prometheus.

A process that forks workers (the gateway with QUARRY_GATEWAY_WORKERS > 1) uses
prometheus-client's multiprocess mode: each worker writes its samples to files in a
shared folder and the parent's endpoint sums them, so Prometheus sees one coherent
set rather than one worker's fragment per scrape.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from quarry.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
    start_http_server(port, addr=settings.bind_host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", settings.bind_host, port)
    return port
