"""gRPC plumbing shared by the services and their clients: servers, channels, retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

# Generous limits: a config or a campaign report can be several MB.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


async def serve_grpc(
    bind: str, register: Callable[[grpc.aio.Server], None], name: str
) -> grpc.aio.Server:
    """Start an aio gRPC server on bind (host:port) with the servicers `register` adds."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server)
    if server.add_insecure_port(bind) == 0:
        raise RuntimeError(f"{name}: cannot listen on {bind}")
    await server.start()
    log.info("%s gRPC listening on %s", name, bind)
    return server


def aio_channel(addr: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)


def sync_channel(addr: str) -> grpc.Channel:
    return grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)


async def run_forever_with_reconnect(
    name: str, stream_once: Callable[[], Awaitable[None]], max_backoff_s: float = 5.0
) -> None:
    """Run a watch stream for ever: when it ends or fails, reconnect with backoff."""
    backoff = 0.1
    while True:
        try:
            await stream_once()
            backoff = 0.1
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            log.warning("%s watch: %s (%s); reconnecting", name, exc.code().name, exc.details())
        except Exception:
            log.exception("%s watch failed; reconnecting", name)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
