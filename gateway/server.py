"""Gateway process entry point: the osquery API over HTTPS, one process or several workers.

The HTTP server is the gateway's own (gateway/http_connection.py,
docs/adr/0016-own-http-server.md) on uvloop's TLS transport; this module binds the
listening socket once, serves /metrics, and either serves in this process
(gateway/serving.py) or starts worker processes that share the socket (gateway/workers.py).
"""

from __future__ import annotations

import logging
import socket

from gateway.serving import APP, serve
from gateway.tls_policy import gateway_policy
from gateway.workers import run_workers
from quarry.runtime.metrics_endpoint import prepare_multiprocess_metrics, start_metrics_endpoint
from quarry.runtime.settings import Settings
from quarry.state.directory import gateway_metrics_dir

log = logging.getLogger(__name__)


def bind(settings: Settings) -> socket.socket:
    """The socket, bound once for every worker.

    Not listening yet: each process listens once its state has started (the event loop's
    create_server), so until the gateway can answer, connections are refused rather than
    left waiting in the backlog, as under uvicorn.
    """
    family = socket.AF_INET6 if ":" in settings.bind_host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((settings.bind_host, settings.gateway_port))
    except OSError as exc:
        listening.close()
        raise SystemExit(
            f"gateway cannot listen on {settings.bind_host}:{settings.gateway_port}: {exc}"
        ) from exc
    listening.setblocking(False)
    listening.set_inheritable(True)
    return listening


def main(settings: Settings, app: str = APP) -> None:
    policy = gateway_policy(settings)
    if settings.tls_client_ca:
        log.info(
            "TLS client certificates %s, verified against %s",
            "required" if settings.tls_client_cert_required else "accepted",
            settings.tls_client_ca,
        )
    listening = bind(settings)
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
    if settings.gateway_workers > 1:
        code = run_workers(settings, listening, app)
    else:
        code = serve(settings, listening, policy, app)
    if code:
        raise SystemExit(code)
