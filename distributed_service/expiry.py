"""Announces CLOSE when a campaign's time runs out, so gateways stop handing it out,
and refreshes the gauges that count hosts across open campaigns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Expiry times are whole seconds; checking twice a second closes within about one.
CHECK_INTERVAL_S = 0.5
# Counting hosts per state scans every open campaign's hosts: not on every check.
GAUGE_INTERVAL_S = 5.0


async def close_expired_forever(
    close_expired: Callable[[], int], show_gauges: Callable[[], None]
) -> None:
    gauges_shown_at = 0.0
    while True:
        try:
            close_expired()
            if time.monotonic() - gauges_shown_at >= GAUGE_INTERVAL_S:
                show_gauges()
                gauges_shown_at = time.monotonic()
        except Exception:
            # A failing check must not stop the next one (the database may be busy).
            log.exception("closing expired campaigns failed")
        await asyncio.sleep(CHECK_INTERVAL_S)
