"""Gateway process entry point: uvicorn over HTTPS with the osquery API."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from gateway.tls_bootstrap import TlsFiles, ensure_certificates
from quarry.metrics_endpoint import prepare_multiprocess_metrics, start_metrics_endpoint
from quarry.settings import Settings

log = logging.getLogger(__name__)


def tls_files(settings: Settings) -> TlsFiles:
    """The configured certificate, or the local CA's (created on first start)."""
    if settings.tls_cert and settings.tls_key:
        return TlsFiles(Path(settings.tls_ca), Path(settings.tls_cert), Path(settings.tls_key))
    return ensure_certificates(settings.path("tls"), [settings.public_host])


def main(settings: Settings) -> None:
    files = tls_files(settings)
    if settings.gateway_workers > 1:
        prepare_multiprocess_metrics(settings.path("gateway-metrics"))
    start_metrics_endpoint(settings, "gateway")
    log.info(
        "osquery gateway on https://%s:%d (%d worker%s)",
        settings.bind_host,
        settings.gateway_port,
        settings.gateway_workers,
        "s" if settings.gateway_workers > 1 else "",
    )
    # uvicorn.run, not Server.run: only it starts `workers` processes.
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.bind_host,
        port=settings.gateway_port,
        workers=settings.gateway_workers,
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,  # osquery keeps one connection per plugin thread
        server_header=False,
    )
