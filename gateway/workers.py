"""QUARRY_GATEWAY_WORKERS > 1: worker processes sharing one listening socket.

The parent binds the socket once and starts each worker as `python -m gateway.workers FD
APP` with the socket's descriptor inherited, as uvicorn did (fresh interpreters, so
prometheus-client's multiprocess mode is on before any metric exists: the parent set
PROMETHEUS_MULTIPROC_DIR, quarry/runtime/metrics_endpoint.py). The kernel spreads new
connections over the workers. The parent serves /metrics (the workers' sums) and watches:
a worker that dies is replaced, unless it failed at start-up (its state could not start:
restarting would fail the same way), which stops the gateway. SIGTERM or SIGINT is passed
to every worker, which drains (gateway/serving.py), and the parent waits for them. A
parent killed outright (SIGKILL, the OOM killer) takes its workers with it: each gets
SIGTERM from the kernel (quarry/runtime/parent_death.py) and drains as above, rather than
serving on alone with no one to replace it or to stop it.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

from prometheus_client import multiprocess

from gateway.serving import APP, STARTUP_FAILURE, serve
from gateway.tls_policy import gateway_policy
from quarry.runtime.garbage_collection import tune_for_throughput
from quarry.runtime.parent_death import die_with_parent
from quarry.runtime.process_logging import setup_logging
from quarry.runtime.settings import Settings

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


def run_workers(settings: Settings, listening: socket.socket, app: str = APP) -> int:
    """Start the workers, replace any that dies, stop them on SIGTERM; the exit code."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    fd = listening.fileno()
    preexec = die_with_parent()  # made once; workers are started from this (main) thread
    workers = [_start_worker(fd, app, preexec) for _ in range(settings.gateway_workers)]
    code = 0
    while not stopping:
        time.sleep(WATCH_INTERVAL_S)
        for index, worker in enumerate(workers):
            exit_code = worker.poll()
            if exit_code is None or stopping:
                continue
            forget_worker_metrics(worker.pid)
            if exit_code == STARTUP_FAILURE:
                log.error("gateway worker %d could not start; stopping", worker.pid)
                stopping.append(0)
                code = 1
                break
            log.warning("gateway worker %d exited (%s); starting another", worker.pid, exit_code)
            workers[index] = _start_worker(fd, app, preexec)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait()
    return code


def forget_worker_metrics(pid: int) -> None:
    """A dead worker's gauges (connections and work in flight, its loop's last turn) leave
    the sums, or /metrics and /livez would count a process that is gone; its counters stay."""
    multiprocess.mark_process_dead(pid)


def _start_worker(fd: int, app: str, preexec: Callable[[], None] | None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.workers", str(fd), app],
        pass_fds=(fd,),
        preexec_fn=preexec,
    )


def worker_main(argv: list[str]) -> int:
    """A worker: serve on the inherited socket, settings from QUARRY_* like the parent."""
    fd, app = int(argv[0]), argv[1] if len(argv) > 1 else APP
    settings = Settings.from_env()
    setup_logging("gateway", settings.log_level)
    tune_for_throughput()
    return serve(settings, socket.socket(fileno=fd), gateway_policy(settings), app)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
