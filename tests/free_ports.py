"""Free loopback ports for the processes a test starts (see QUARRY_PORT_BASE)."""

from __future__ import annotations

import collections
import random
import socket
from pathlib import Path

from quarry.runtime.settings import PORT_OFFSETS

# Every port one base uses: the service ports, and the metrics ports above them.
PORT_SPAN = max(PORT_OFFSETS.values()) + 10
LOWEST_BASE = 10_000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default if unread)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def candidate_bases() -> range:
    """Bases whose whole span lies below the ephemeral range: a port in it may be taken by
    any outgoing connection (a test's own clients included) between the check that it is
    free and the moment a service binds it."""
    low, _ = ephemeral_ports()
    return range(LOWEST_BASE, low - PORT_SPAN)


# Bases handed out lately: a test that starts two clusters asks for both bases before
# either binds its ports, so the second must not overlap the first's span.
_recent: collections.deque[int] = collections.deque(maxlen=64)


def free_port_base() -> int:
    """A base port whose whole span is free on loopback right now."""
    bases = candidate_bases()
    for _ in range(200):
        base = random.choice(bases)
        if any(abs(base - other) < PORT_SPAN for other in _recent):
            continue
        if all(port_is_free(base + offset) for offset in range(PORT_SPAN)):
            _recent.append(base)
            return base
    raise RuntimeError("no free port range found")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
