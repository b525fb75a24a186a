"""Gateway process entry point: uvicorn over HTTPS with the osquery API."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from gateway.connection_deadlines import PROTOCOL_IMPORT_STRING
from gateway.tls_policy import TlsPolicy, context_factory_for
from quarry.encryption.gateway_certificates import TlsFiles, tls_files
from quarry.runtime.metrics_endpoint import prepare_multiprocess_metrics, start_metrics_endpoint
from quarry.runtime.settings import Settings
from quarry.state.directory import gateway_metrics_dir

log = logging.getLogger(__name__)


def tls_policy(settings: Settings, files: TlsFiles) -> TlsPolicy:
    """Versions, ciphers and client certificates for the gateway's certificate files."""
    if settings.tls_client_ca:
        if not Path(settings.tls_client_ca).is_file():
            raise SystemExit(f"QUARRY_TLS_CLIENT_CA: no such file {settings.tls_client_ca}")
        log.info(
            "TLS client certificates %s, verified against %s",
            "required" if settings.tls_client_cert_required else "accepted",
            settings.tls_client_ca,
        )
    return TlsPolicy.from_settings(settings, str(files.cert), str(files.key))


def main(settings: Settings) -> None:
    files = tls_files(settings)
    if settings.gateway_workers > 1:
        prepare_multiprocess_metrics(gateway_metrics_dir(settings))
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
        # TLS 1.2+, osquery's ciphers, client certificates, reload on change (tls_policy.py).
        ssl_context_factory=context_factory_for(tls_policy(settings, files)),
        # Registers each connection's client certificate for the enroll handler, and
        # closes connections whose request head is too slow (connection_deadlines.py).
        http=PROTOCOL_IMPORT_STRING,
        # The gateway terminates TLS itself: a forwarded-for header is never the peer,
        # and the certificate lookup needs scope["client"] to be the real connection.
        proxy_headers=False,
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,  # osquery keeps one connection per plugin thread
        server_header=False,
    )
