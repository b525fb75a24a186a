"""The API process: uvicorn over HTTPS on api_port, with the gateway's certificate, and
/metrics, /healthz and /readyz on its metrics port (docs/observability.md).

The gateway's certificate (QUARRY_TLS_CERT, else the local CA's, state_dir/tls/) is the
one issued for the public host, which people and scripts reach; the internal one is for
Quarry's own processes (docs/security.md). The osquery listener is never this port.
"""

from __future__ import annotations

import logging
import ssl

import uvicorn

from quarry.encryption.gateway_certificates import tls_files
from quarry.runtime.metrics_endpoint import start_metrics_endpoint
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def main(settings: Settings) -> None:
    files = tls_files(settings)
    # Plain HTTP on its own port, as every process's (quarry/runtime/metrics_endpoint.py);
    # /readyz turns 200 once the application has started (api_service/app.py).
    start_metrics_endpoint(settings, "api")
    log.info("REST API on https://%s:%d/api/v1", settings.bind_host, settings.api_port)
    config = uvicorn.Config(
        "api_service.app:create_app",
        factory=True,
        host=settings.bind_host,
        port=settings.api_port,
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
        log_config=None,
        access_log=False,
        server_header=False,
        # A browser or script that forwards no header is the peer itself.
        proxy_headers=False,
        # Open event streams must not hold a stop: `quarry up` kills what is left after 15 s.
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    config.load()
    # uvicorn's context allows TLS 1.0; the API keeps the gateway's floor (QUARRY_TLS_MIN_VERSION).
    if config.ssl is not None:
        config.ssl.minimum_version = TLS_VERSIONS.get(
            settings.tls_min_version, ssl.TLSVersion.TLSv1_2
        )
    server.run()
