"""A test process whose event loop a test can block on purpose: `python -m
tests.blocking_loop_process FLAG SECONDS`.

It serves the metrics endpoint of the `enroll` port (QUARRY_PORT_BASE) and watches its loop as
every Quarry process does (quarry/runtime/loop_watch.py); whenever the file FLAG appears it
removes it and calls time.sleep(SECONDS) on the loop, the way a blocking call in a handler
would wedge a real service, while the metrics thread keeps answering.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from quarry.runtime.loop_watch import start_loop_watch
from quarry.runtime.metrics_endpoint import start_metrics_endpoint
from quarry.runtime.settings import Settings

POLL_S = 0.05


async def main(flag: Path, seconds: float) -> None:
    start_metrics_endpoint(Settings.from_env(), "enroll")
    start_loop_watch()
    while True:
        if flag.exists():
            flag.unlink()
            time.sleep(seconds)  # on the loop: nothing else on it runs meanwhile
        await asyncio.sleep(POLL_S)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2])))
