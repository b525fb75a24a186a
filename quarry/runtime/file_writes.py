"""Writing files that other processes read while they run: whole, or not at all.

A file is written aside (a name of this process's in the same folder), given its mode,
then renamed into place, so a reader sees the old file or the new one, never half of
one. `write_once` links instead of renaming: of several processes starting together, the
first one's file wins and every process reads that one.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    aside = _write_aside(path, data, mode)
    os.replace(aside, path)


def write_once(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create path with data unless it exists; whether this call created it."""
    aside = _write_aside(path, data, mode)
    try:
        os.link(aside, path)  # fails when another process got there first: keep theirs
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink()


def _write_aside(path: Path, data: bytes, mode: int) -> Path:
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(aside, mode)  # O_CREAT's mode is masked by the umask
    return aside
