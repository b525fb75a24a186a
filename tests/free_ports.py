"""Free loopback ports for the processes a test starts (see QUARRY_PORT_BASE)."""

from __future__ import annotations

import random
import socket

from quarry.runtime.settings import PORT_OFFSETS

# Every port one base uses: the service ports, and the metrics ports above them.
PORT_SPAN = max(PORT_OFFSETS.values()) + 10


def free_port_base() -> int:
    """A base port whose whole span is free on loopback right now."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000 - PORT_SPAN)
        if all(port_is_free(base + offset) for offset in range(PORT_SPAN)):
            return base
    raise RuntimeError("no free port range found")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
