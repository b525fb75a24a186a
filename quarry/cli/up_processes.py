"""The processes of `quarry up`: children that die with it, and leftovers found by the next.

On Linux each child asks the kernel for SIGTERM when its parent dies (prctl
PR_SET_PDEATHSIG, quarry/runtime/parent_death.py), so a `kill -9` of the supervisor
stops its children too, each as after Ctrl-C. Whatever escapes that (a child that
ignores SIGTERM) the next `quarry up` on the same state directory finds in the pid file
(state_dir/quarry-up.pids, quarry/state/directory.py): the supervisor's pid and its
children's, each with the kernel's start time of the process, so a pid the kernel has
since given to an unrelated process is never taken for ours. docs/faults.md says what
the next `quarry up` does with them. Both are Linux's: elsewhere children do not die
with the supervisor and no recorded process is found alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quarry.runtime.file_writes import write_atomically

LEFTOVER_STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Recorded:
    """A process `quarry up` started (or the supervisor itself), as the pid file keeps it."""

    name: str
    pid: int
    started: int  # the kernel's start time (clock ticks since boot): tells a reused pid

    def alive(self) -> bool:
        return self.started != 0 and process_start_time(self.pid) == self.started


def process_start_time(pid: int) -> int:
    """The start time of a running process (field 22 of /proc/PID/stat); 0: none (gone, or
    a zombie, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return 0 if fields[0] in ("Z", "X") else int(fields[19])


def record(name: str, pid: int) -> Recorded:
    return Recorded(name, pid, process_start_time(pid))


def write_pid_file(path: Path, processes: list[Recorded]) -> None:
    write_atomically(path, json.dumps([asdict(p) for p in processes]).encode())


def read_pid_file(path: Path) -> list[Recorded]:
    """The recorded processes; none when the file is missing or unreadable."""
    try:
        return [Recorded(**entry) for entry in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def hold_lock(path: Path) -> int | None:
    """Take the exclusive lock on path for the life of this process and write our pid in
    it; None when another process holds it.

    flock is atomic and the kernel drops it when the holder dies however it dies, so two
    `quarry up` started at the same moment cannot both pass (the pid file alone is read,
    then written much later, after the certificates are made). The descriptor is not
    inherited (Python opens files non-inheritable), so children never hold the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_holder(path: Path, wait_s: float = 2.0) -> int | None:
    """The pid written in a held lock file (the holder writes it just after locking)."""
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def stop_processes(processes: list[Recorded]) -> None:
    """SIGTERM each, wait until they are gone, SIGKILL those still there after the timeout."""
    for process in processes:
        _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_STOP_TIMEOUT_S
    while any(p.alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in processes:
        if process.alive():
            _signal(process, signal.SIGKILL)


def _signal(process: Recorded, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
