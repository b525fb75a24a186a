"""Ingest alone: a real ingest process fed 20-line event batches over ZeroMQ at a fixed rate.

`python -m bench.ingest_direct --clickhouse-url URL --clickhouse-pid PID --rate 100` starts
`quarry serve ingest` (state in a temporary directory), sends the `events` workload's batches
(bench/event_payloads.py, with the gateway's line identities and batch ids) from one DEALER,
one [correlation id, LogBatch] pair per message spaced evenly, as a gateway does at low rates,
and prints the CPU of ingest (and of the ClickHouse server, when its PID is given) per batch
and per row over the window, from /proc, with `--threads` split by thread. Without the
gateway and the load generator on the same cores, ingest's own cost per batch shows with
less noise than in `python -m bench` (docs/performance.md, "Ingest's cost per batch").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import zmq

from bench.event_payloads import EVENT_LINES_PER_FLUSH, EventPayloads
from gateway.log_lines import batch_id, encode_lines
from protos.v1 import logs_pb2
from tests.emulator import HostProfile
from tests.free_ports import free_port_base
from tests.service_processes import ServiceProcess

HOSTS = 500
WARM_UP_S = 5.0
# Far enough ahead that no pre-built batch expires before it is sent.
ANSWER_BY_S = 600


def batch_frames(count: int) -> list[bytes]:
    now = time.time()
    hosts = [EventPayloads(HostProfile.make(i), f"host-{i}", started_at=now) for i in range(HOSTS)]
    frames = []
    for index in range(count):
        node_id = f"node-{index % HOSTS}"
        host = hosts[index % HOSTS]
        data_json, line_ids = encode_lines(host.due_records(now))
        batch = logs_pb2.LogBatch(
            batch_id=batch_id(node_id, logs_pb2.RESULT, "", line_ids),
            kind=logs_pb2.RESULT,
            node_id=node_id,
            host_identifier=host.host_identifier,
            received_at=int(now),
            data_json=data_json,
            line_ids=line_ids,
            answer_by_ms=int((now + ANSWER_BY_S) * 1000),
        )
        frames.append(batch.SerializeToString())
    return frames


def cpu_s(pid: int, task: str = "") -> tuple[float, float]:
    """(user, system) CPU seconds of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def threads_cpu(pid: int) -> dict[str, tuple[float, float]]:
    result = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            result[task] = cpu_s(pid, task)
        except OSError:
            continue
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clickhouse-url", required=True)
    parser.add_argument("--clickhouse-pid", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100.0, help="batches per second")
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--threads", action="store_true", help="split ingest's CPU by thread")
    args = parser.parse_args()
    frames = batch_frames(int(args.rate * (WARM_UP_S + args.window + 2)))
    with tempfile.TemporaryDirectory(prefix="quarry-ingest-direct-") as state:
        service = ServiceProcess(
            "ingest", Path(state), free_port_base(), {"QUARRY_CLICKHOUSE_URL": args.clickhouse_url}
        )
        service.start()
        try:
            drive(service, frames, args)
        finally:
            service.stop()


def drive(service: ServiceProcess, frames: list[bytes], args: argparse.Namespace) -> None:
    time.sleep(3)  # the schema is created
    assert service._process is not None
    pid = service._process.pid
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(service.settings.zmq_endpoints()[0])
    sent = acked = errors = 0
    marks: dict[str, tuple] = {}
    start = time.monotonic()
    give_up_at = start + len(frames) / args.rate + 30
    while sent < len(frames) or (acked < sent and time.monotonic() < give_up_at):
        now = time.monotonic()
        for name, at in (("start", WARM_UP_S), ("end", WARM_UP_S + args.window)):
            if now - start >= at and name not in marks:
                clickhouse = sum(cpu_s(args.clickhouse_pid)) if args.clickhouse_pid else 0.0
                marks[name] = (now, sum(cpu_s(pid)), clickhouse, acked, threads_cpu(pid))
        due = start + sent / args.rate
        if sent < len(frames) and now >= due:
            dealer.send_multipart([uuid.uuid4().bytes[:8], frames[sent]])
            sent += 1
            continue
        timeout_ms = max(0.0, (due - now) * 1000) if sent < len(frames) else 1000
        if dealer.poll(timeout_ms):
            pairs = dealer.recv_multipart()
            for index in range(1, len(pairs), 2):
                acked += 1
                errors += not logs_pb2.LogAck.FromString(pairs[index]).ok
    report(marks["start"], marks["end"], errors)


def report(start: tuple, end: tuple, errors: int) -> None:
    t0, ingest0, clickhouse0, acked0, threads0 = start
    t1, ingest1, clickhouse1, acked1, threads1 = end
    batches = acked1 - acked0
    per_batch = 1e6 * (ingest1 - ingest0) / batches
    print(
        f"ingest {per_batch:.0f} µs/batch, {per_batch / EVENT_LINES_PER_FLUSH:.1f} µs/row, "
        f"{(ingest1 - ingest0) / (t1 - t0):.3f} cores; "
        f"clickhouse {1e6 * (clickhouse1 - clickhouse0) / batches:.0f} µs/batch; "
        f"{batches / (t1 - t0):.0f} batches/s acked; {errors} errors"
    )
    for task, (user, system) in sorted(threads1.items()):
        user0, system0 = threads0.get(task, (0.0, 0.0))
        if user - user0 + system - system0 > 0:
            print(
                f"  thread {task}: user {1e6 * (user - user0) / batches:.0f}, "
                f"system {1e6 * (system - system0) / batches:.0f} µs/batch"
            )


if __name__ == "__main__":
    main()
