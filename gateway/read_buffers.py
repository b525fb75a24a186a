"""Handing each connection's TLS read buffer back to the system when the connection closes.

uvloop's TLS protocol mallocs a 256 KB read buffer per connection (SSL_READ_MAX_SIZE)
and keeps it until the connection closes; only the pages a read touched are resident
(docs/performance.md, "Where the memory of an idle connection goes").

`map_large_buffers_separately` pins glibc's mmap threshold at 256 KiB. By default glibc
raises that threshold the first time such a block is freed, after which every
connection's 256 KB read buffer is carved out of the heap; pages a closed connection
touched then stay resident as holes between newer objects, and RSS only grows. Pinned,
each buffer is a mapping of its own, returned to the system when its connection closes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# uvloop's TLS read buffer (SSL_READ_MAX_SIZE): blocks this size and larger are mmapped.
MMAP_THRESHOLD_BYTES = 256 * 1024
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def map_large_buffers_separately() -> bool:
    """Pin glibc's mmap threshold (see the module docstring); False where there is no glibc."""
    libc_name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt if libc_name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) unavailable: glibc's default applies")
        return False
    return True
