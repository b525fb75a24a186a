"""Logging set-up for every Quarry process: one line per event, prefixed by service."""

from __future__ import annotations

import logging
import sys


def setup_logging(service: str, level: str = "INFO") -> None:
    """Log to stderr as `time level service logger: message`; `quarry up` relays it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access lines would drown what matters; metrics count requests.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
