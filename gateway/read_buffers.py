"""The memory of each connection's TLS buffers: handed back when it closes, and once a
large body or answer has gone through it.

uvloop's TLS protocol mallocs a 256 KB read buffer per connection (SSL_READ_MAX_SIZE)
and keeps it until the connection closes; only the pages a read touched are resident
(docs/performance.md, "Where the memory of an idle connection goes"). Each connection
also has two OpenSSL memory BIOs (encrypted bytes in and out) whose capacity grows to the
largest read or write and never shrinks.

`map_large_buffers_separately` pins glibc's mmap threshold at 256 KiB. By default glibc
raises that threshold the first time such a block is freed, after which every
connection's 256 KB read buffer is carved out of the heap; pages a closed connection
touched then stay resident as holes between newer objects, and RSS only grows. Pinned,
each buffer is a mapping of its own, returned to the system when its connection closes.

`release_spare_pages` is for a connection that stays open after a large body (a logger
connection's 1,024-line batch, a large config): on loopback or a fast network one socket
read fills the whole 256 KB buffer, and the incoming BIO grows as large, so such a
connection kept about 540 KB resident until it closed, twenty times an idle check-in
connection. It tells the kernel (madvise MADV_DONTNEED) that the whole pages of the read
buffer and the pages of each BIO past the bytes it holds are free: they stay allocated,
read back as zeros, and are only resident again when a later read touches them. Nothing
they hold is in use between reads: uvloop copies each read into the incoming BIO at once,
and a BIO's bytes past its length are spare capacity.

Reaching those buffers takes what neither uvloop nor the ssl module exposes: uvloop's TLS
protocol object is found among the transport's referents (the garbage collector's view of
its Cython fields), its read buffer through its `get_buffer`, and each BIO's `BUF_MEM`
through OpenSSL's BIO_ctrl on the pointer CPython's MemoryBIO object holds right after its
object header. Each step is checked (types, the BIO's method type, sizes); where one does
not hold (another loop, another Python, no glibc), nothing is released and the connection
behaves as before.

`return_free_memory` (glibc's malloc_trim) hands back the free pages inside the heap:
each TLS handshake allocates and frees tens of KB (OpenSSL's record buffers, the
handshake's state), and what thousands of them leave free between the objects that live
on is otherwise resident for good. The connection sweep calls it every few seconds
(gateway/connection_sweep.py); it costs a few hundred microseconds to a few milliseconds
each time, and about 0.7-0.9 KB less per idle connection (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import mmap
import ssl
import sys
import sysconfig
from typing import Any

log = logging.getLogger(__name__)

# uvloop's TLS read buffer (SSL_READ_MAX_SIZE): blocks this size and larger are mmapped.
MMAP_THRESHOLD_BYTES = 256 * 1024
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MADV_DONTNEED = 4  # <sys/mman.h> on Linux
PAGE = mmap.PAGESIZE
# OpenSSL's <openssl/bio.h>
BIO_C_GET_BUF_MEM_PTR = 115
BIO_CTRL_PENDING = 10
BIO_TYPE_MEM = 1 | 0x0400


class _BufMem(ctypes.Structure):
    """OpenSSL's BUF_MEM (<openssl/buffer.h>): what a memory BIO holds."""

    _fields_ = [
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def map_large_buffers_separately() -> bool:
    """Pin glibc's mmap threshold (see the module docstring); False where there is no glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) unavailable: glibc's default applies")
        return False
    return True


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); False where
    there is no glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


class _Release:
    """The C functions `release_spare_pages` calls, looked up once; None where absent."""

    def __init__(self) -> None:
        libc = _libc()
        self.madvise = getattr(libc, "madvise", None)
        if self.madvise is not None:
            self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.bio_ctrl = self.bio_method_type = None
        # CPython's MemoryBIO is {PyObject_HEAD; BIO *bio; ...}: the pointer right after
        # the header, on the default (GIL) build only.
        if sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED"):
            try:
                libssl = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
                self.bio_ctrl, self.bio_method_type = libssl.BIO_ctrl, libssl.BIO_method_type
            except (OSError, AttributeError):
                pass
        if self.bio_ctrl is not None:
            self.bio_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
            self.bio_ctrl.restype = ctypes.c_long
            self.bio_method_type.argtypes = [ctypes.c_void_p]
            self.bio_method_type.restype = ctypes.c_int
        self.header_bytes = object.__basicsize__

    def span(self, start: int, end: int) -> int:
        """Drop the whole pages inside [start, end); the bytes released."""
        first, last = -(-start // PAGE) * PAGE, end // PAGE * PAGE
        if last <= first or self.madvise is None:
            return 0
        if self.madvise(first, last - first, MADV_DONTNEED) != 0:
            return 0
        return last - first

    def bio(self, memory_bio: ssl.MemoryBIO) -> int:
        """Drop the pages of a memory BIO past the bytes it holds; the bytes released."""
        if self.bio_ctrl is None:
            return 0
        if type(memory_bio).__basicsize__ < self.header_bytes + ctypes.sizeof(ctypes.c_void_p):
            return 0
        bio = ctypes.c_void_p.from_address(id(memory_bio) + self.header_bytes).value
        if not bio or self.bio_method_type(bio) != BIO_TYPE_MEM:
            return 0
        if self.bio_ctrl(bio, BIO_CTRL_PENDING, 0, None) != memory_bio.pending:
            return 0  # not the BIO behind this object
        buf = ctypes.POINTER(_BufMem)()
        if self.bio_ctrl(bio, BIO_C_GET_BUF_MEM_PTR, 0, ctypes.byref(buf)) != 1 or not buf:
            return 0
        held = buf.contents
        if held.data is None or held.length > held.max:
            return 0
        return self.span(held.data + held.length, held.data + held.max)


_release: _Release | None = None


def release_spare_pages(transport: Any) -> int:
    """Hand back the pages of a TLS connection's buffers that hold nothing (see the module
    docstring); the bytes released, 0 when they cannot be reached. Call it between reads,
    never from inside one."""
    global _release
    if _release is None:
        _release = _Release()
    protocol = _tls_protocol(transport)
    if protocol is None:
        return 0
    released = 0
    view = protocol.get_buffer(0)  # the whole read buffer, as it is: nothing reallocated
    if isinstance(view, memoryview) and not view.readonly and view.nbytes:
        anchor = ctypes.c_char.from_buffer(view)
        start = ctypes.addressof(anchor)
        del anchor  # its export of the view, before the view is released
        released += _release.span(start, start + view.nbytes)
        view.release()
    for referent in gc.get_referents(protocol):
        if isinstance(referent, ssl.MemoryBIO):
            released += _release.bio(referent)
    return released


def _tls_protocol(transport: Any) -> Any:
    """uvloop's SSLProtocol under an app transport, or None (another loop, no TLS)."""
    for referent in gc.get_referents(transport):
        kind = type(referent)
        if kind.__name__ == "SSLProtocol" and kind.__module__ == "uvloop.loop":
            return referent
    return None
