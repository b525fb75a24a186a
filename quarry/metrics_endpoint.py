"""The /metrics endpoint every Quarry process serves for Prometheus."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from quarry.settings import Settings

log = logging.getLogger(__name__)


def start_metrics_endpoint(settings: Settings, service: str) -> int:
    """Serve /metrics on this service's port (a background thread); returns the port."""
    port = settings.metrics_port(service)
    start_http_server(port, addr=settings.bind_host)
    log.info("metrics on http://%s:%d/metrics", settings.bind_host, port)
    return port
