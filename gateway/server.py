"""Gateway process entry point: uvicorn over HTTPS with the osquery API."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import uvicorn

from gateway.client_certificates import PROTOCOL_IMPORT_STRING
from gateway.tls_bootstrap import TlsFiles, ensure_certificates
from quarry.metrics_endpoint import prepare_multiprocess_metrics, start_metrics_endpoint
from quarry.settings import Settings

log = logging.getLogger(__name__)


def tls_files(settings: Settings) -> TlsFiles:
    """The configured certificate, or the local CA's (created on first start)."""
    if settings.tls_cert and settings.tls_key:
        return TlsFiles(Path(settings.tls_ca), Path(settings.tls_cert), Path(settings.tls_key))
    return ensure_certificates(settings.path("tls"), [settings.public_host])


def client_certificate_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options that ask clients for a certificate signed by tls_client_ca."""
    if not settings.tls_client_ca:
        return {}
    if not Path(settings.tls_client_ca).is_file():
        raise SystemExit(f"QUARRY_TLS_CLIENT_CA: no such file {settings.tls_client_ca}")
    required = settings.tls_client_cert_required
    log.info(
        "TLS client certificates %s, verified against %s",
        "required" if required else "accepted",
        settings.tls_client_ca,
    )
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL,
        "ssl_ca_certs": settings.tls_client_ca,
    }


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
        **client_certificate_options(settings),
        # Registers each connection's client certificate for the enroll handler.
        http=PROTOCOL_IMPORT_STRING,
        # The gateway terminates TLS itself: a forwarded-for header is never the peer,
        # and the certificate lookup needs scope["client"] to be the real connection.
        proxy_headers=False,
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,  # osquery keeps one connection per plugin thread
        server_header=False,
    )
