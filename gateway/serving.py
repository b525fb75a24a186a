"""One gateway process serving: its event loop, TLS, state, connections, and graceful stop.

Run by gateway/server.py in the gateway's own process when it has one worker, and by each
worker process otherwise (gateway/workers.py), on a listening socket bound once by the
parent. The order is uvicorn's: the state starts (gRPC channels, caches, the ingest
forwarder) before the first connection is accepted; on SIGTERM or SIGINT the process stops
accepting, closes the connections that have no request under way, lets the others answer
theirs (at most DRAIN_TIMEOUT_S; a body still arriving is bounded by its own deadline),
then stops the state.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import socket
import time
from collections.abc import Callable

import uvloop

from gateway.connection_sweep import ConnectionSweep
from gateway.http_connection import Listener
from gateway.read_buffers import map_large_buffers_separately
from gateway.routing import GatewayApp
from gateway.tls_policy import ReloadingContext, TlsPolicy
from quarry.runtime.loop_watch import start_loop_watch
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

# The factory of the app a gateway process serves, "module:function" (a benchmark serves
# another: bench/unauthenticated_gateway.py).
APP = "gateway.app:create_app"
DRAIN_TIMEOUT_S = 30.0
BACKLOG = 2048  # as uvicorn had it: an enrollment storm opens thousands of connections
STARTUP_FAILURE = 3  # a worker's exit code when its state could not start: do not restart


def load_app(factory: str) -> Callable[[Settings], GatewayApp]:
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(settings: Settings, listening: socket.socket, policy: TlsPolicy, app: str = APP) -> int:
    """Serve until SIGTERM or SIGINT; the process's exit code."""
    map_large_buffers_separately()  # before the first connection's read buffer
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(settings, listening, policy, load_app(app)(settings)))


async def _serve(
    settings: Settings, listening: socket.socket, policy: TlsPolicy, app: GatewayApp
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    start_loop_watch()  # /livez and the loop lag (quarry/runtime/loop_watch.py)
    try:
        state = await app.startup()
    except Exception:
        log.exception("gateway start-up failed")
        return STARTUP_FAILURE
    sweep = ConnectionSweep()
    sweep.start()
    listener = Listener(app, state, sweep, settings.request_head_timeout_s)
    # TLS 1.2+, osquery's ciphers, client certificates, reload on change (tls_policy.py).
    context = ReloadingContext(policy).front
    server = await loop.create_server(
        listener.connection, sock=listening, ssl=context, backlog=BACKLOG
    )
    try:
        await stop.wait()
        log.info("stopping: draining %d connection(s)", listener.open_connections)
        server.close()
        listener.shut_down()
        await _drained(listener, DRAIN_TIMEOUT_S)
    finally:
        sweep.stop()
        await app.shutdown(state)
    return 0


async def _drained(listener: Listener, timeout_s: float) -> None:
    """Wait for the requests under way to be answered, then close what is left."""
    give_up = time.monotonic() + timeout_s
    while (listener.open_connections or listener.tasks) and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    for connection in list(listener.sweep.connections):
        connection.idle_too_long()  # type: ignore[attr-defined]
    if listener.tasks:
        log.warning("%d request(s) still under way at shutdown", len(listener.tasks))
