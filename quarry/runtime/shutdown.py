"""How a service process learns it must stop: SIGTERM (Kubernetes, `quarry up`) or Ctrl-C."""

from __future__ import annotations

import asyncio
import signal


async def until_signalled() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
