"""Announces CLOSE when a campaign's time runs out, so gateways stop handing it out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Expiry times are whole seconds; checking twice a second closes within about one.
CHECK_INTERVAL_S = 0.5


async def close_expired_forever(close_expired: Callable[[], int]) -> None:
    while True:
        try:
            close_expired()
        except Exception:
            # A failing check must not stop the next one (the database may be busy).
            log.exception("closing expired campaigns failed")
        await asyncio.sleep(CHECK_INTERVAL_S)
