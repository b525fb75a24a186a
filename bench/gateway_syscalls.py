"""System calls of the gateway per distributed read arriving alone, counted with strace -c.

At a fleet's schedule each request arrives alone on an idle keep-alive connection, so what
a request costs in system calls (and the wake-ups behind them) is most of its cost
(docs/performance.md, "The gateway's own HTTP server"). This starts a `quarry up` (chdb),
enrolls a node, then sends N distributed reads on one keep-alive connection, GAP_S apart,
while `strace -c` counts the system calls of every gateway thread; then counts them again
for as long with no requests, and prints the difference per request, by call. Needs
strace and the right to attach to the gateway (same user, ptrace allowed).

    python -m bench.gateway_syscalls
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.idle_connections import enroll, gateway_of, post, ssl_context
from bench.process_costs import find_quarry_service_pids
from tests.emulator.http_client import HttpConnection
from tests.quarry_cluster import quarry_cluster

N = 200
GAP_S = 0.02


def count_calls(pid: int, during: Callable[[], None]) -> dict[str, int]:
    """strace -c over every thread of `pid` while `during` runs: calls by name."""
    tids = ",".join(task.name for task in Path(f"/proc/{pid}/task").iterdir())
    with tempfile.NamedTemporaryFile(suffix=".strace") as output:
        tracer = subprocess.Popen(
            ["strace", "-c", "-o", output.name, "-p", tids], stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)  # attached
        during()
        tracer.send_signal(2)
        tracer.wait()
        text = Path(output.name).read_text()
    calls: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            try:
                calls[fields[-1]] = int(fields[3])
            except ValueError:
                continue
    return calls


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="quarry-syscalls-") as scratch,
        quarry_cluster(Path(scratch), "", {}) as cluster,
    ):
        assert cluster.process is not None
        pid = find_quarry_service_pids(cluster.process.pid)["gateway"]
        gateway = gateway_of(cluster.state_dir, cluster.port_base, pid)
        time.sleep(3)  # start-up work done
        loop = asyncio.new_event_loop()
        key = loop.run_until_complete(enroll(gateway))
        connection = HttpConnection(gateway.address, ssl_context(gateway))
        loop.run_until_complete(post(connection, gateway, key, {"node_key": key}))

        async def reads() -> None:
            for _ in range(N):
                await post(connection, gateway, key, {"node_key": key})
                await asyncio.sleep(GAP_S)

        started = time.monotonic()
        busy = count_calls(pid, lambda: loop.run_until_complete(reads()))
        idle = count_calls(pid, lambda: time.sleep(time.monotonic() - started - 0.5))
    per_request = {name: (busy.get(name, 0) - idle.get(name, 0)) / N for name in busy | idle}
    for name, calls in sorted(per_request.items(), key=lambda item: -item[1]):
        if abs(calls) >= 0.05:
            print(f"{name:16s} {calls:6.2f}")
    print(f"{'total':16s} {sum(per_request.values()):6.2f} per distributed read")


if __name__ == "__main__":
    main()
