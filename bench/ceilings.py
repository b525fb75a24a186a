"""The physical limits a run is compared with: the HTTP ceiling and the storage ceiling.

- `http_ceiling`: the bare Starlette server (bench/bare_https_server.py) with the gateway's
  certificate and worker count, saturated by the same driver and the same osquery requests
  as the gateway (a distributed read and a config fetch). Quarry cannot answer faster.
- `storage_ceiling`: raw inserts of result rows, flattened exactly as ingest flattens them,
  into the same ClickHouse in batches the size of ingest's group commit: clickhouse-driver
  into a scratch database on a server, or chdb's JSONCompactColumns insert (ingest's own) in a
  separate process with its own directory, since only one process may open a chdb
  directory. Quarry cannot store rows faster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from clickhouse_driver import Client

from bench.process_costs import ProcessSampler
from bench.saturation import SaturationTarget, run_saturation
from ingest_service.clickhouse_server_store import client_url
from ingest_service.embedded_clickhouse_store import EmbeddedClickHouseStore
from ingest_service.log_rows import RESULT_COLUMNS, RESULTS_TABLE, Row, flatten_batch
from ingest_service.log_store import DATABASE
from ingest_service.schema import RESULTS, create_table, is_modern
from protos.v1 import logs_pb2
from quarry.encryption.gateway_certificates import TlsFiles
from tests.emulator import HostProfile, log_records
from tests.emulator.http_client import ServerAddress, osquery_ssl_context

REPO_ROOT = Path(__file__).resolve().parents[1]
BARE_SERVER_START_TIMEOUT_S = 30.0
BARE_SERVER_STOP_TIMEOUT_S = 10.0
CEILING_NODE_KEY = "bench-ceiling-node-key"
# The gateway's hot check-ins, each answered with fixed bytes by the bare server.
CEILING_ENDPOINTS = {
    "distributed_read": "/api/v1/osquery/distributed/read",
    "config": "/api/v1/osquery/config",
}

# Ingest's group commit flushes at QUARRY_INGEST_FLUSH_ROWS; the ceiling inserts alike.
DEFAULT_INSERT_BATCH_ROWS = 10_000
DEFAULT_STORAGE_ROWS = 100_000  # building them takes ~2 s; inserting ~1-2 s
DEFAULT_STORAGE_SECONDS = 5.0
ROWS_PER_RECORD_BATCH = 20  # result rows in one host's log POST
SCRATCH_DATABASE = "quarry_bench_ceiling"  # on a server; dropped afterwards
QUERY_NAME = "pack_bench_processes"


# --- the HTTP ceiling ---------------------------------------------------------------------


def http_ceiling(
    tls_files: TlsFiles,
    workers: int,
    connections: int,
    duration_s: float,
    *,
    config_bytes: bytes = b"{}",
    host: str = "localhost",
) -> dict[str, Any]:
    """Saturate the bare server with a distributed read, then a config fetch.

    Returns {"workers", "connections", "duration_s", "distributed_read": {...},
    "config": {...}}, each endpoint's figures as `SaturationResult.as_dict()` gives them
    plus "server_cpu_s" and "server_cpu_us_per_request" (the bare server's whole tree).
    """
    port = free_tcp_port()
    with tempfile.TemporaryDirectory(prefix="quarry-bench-bare-") as scratch:
        config_file = Path(scratch) / "config.json"
        config_file.write_bytes(config_bytes)
        server = start_bare_server(port, tls_files, workers, config_file)
        try:
            wait_for_port("127.0.0.1", port, server)
            address = ServerAddress(host, port)
            context = osquery_ssl_context(tls_files.ca_cert)
            body = orjson.dumps({"node_key": CEILING_NODE_KEY})
            figures = {
                name: saturate_with_server_cpu(
                    SaturationTarget(address, context, path, body, node_key=CEILING_NODE_KEY),
                    server.pid,
                    connections,
                    duration_s,
                )
                for name, path in CEILING_ENDPOINTS.items()
            }
        finally:
            stop_process(server)
    return {"workers": workers, "connections": connections, "duration_s": duration_s, **figures}


def saturate_with_server_cpu(
    target: SaturationTarget, server_pid: int, connections: int, duration_s: float
) -> dict[str, Any]:
    """Saturation figures plus the server's CPU (all its workers) per answered request."""
    with ProcessSampler({"server": server_pid}) as sampler:
        result = run_saturation(target, connections=connections, duration_s=duration_s)
    cpu_s = sampler.costs["server"].cpu_s  # includes the untimed warm-up requests
    per_request_us = cpu_s / result.requests * 1e6 if result.requests else None
    return {
        **result.as_dict(),
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_us_per_request": round(per_request_us, 1) if per_request_us else None,
    }


def start_bare_server(
    port: int, tls_files: TlsFiles, workers: int, config_file: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "bench.bare_https_server",
        f"--port={port}",
        f"--cert={tls_files.cert}",
        f"--key={tls_files.key}",
        f"--workers={workers}",
        f"--config={config_file}",
    ]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=repository_env())


def repository_env() -> dict[str, str]:
    """This environment, with the repository importable: `bench` is not an installed package."""
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": python_path}


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + BARE_SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bare HTTPS server exited with {process.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"bare HTTPS server not listening on {host}:{port}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=BARE_SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the rows -----------------------------------------------------------------------------


def ceiling_rows(count: int, rows_per_batch: int = ROWS_PER_RECORD_BATCH) -> list[Row]:
    """`count` results rows as ingest makes them from event-format log POSTs.

    Each simulated host sends one batch of `rows_per_batch` process rows (a differential
    query's first run); the records go through ingest's own `flatten_batch`.
    """
    rows: list[Row] = []
    host_index = 0
    while len(rows) < count:
        rows.extend(host_batch_rows(host_index, rows_per_batch))
        host_index += 1
    return rows[:count]


def host_batch_rows(host_index: int, rows_per_batch: int) -> list[Row]:
    host = HostProfile.make(host_index)
    unix_time = host.start_time + 3600
    records = log_records.event_records(
        QUERY_NAME,
        host.hostname,
        unix_time,
        added=process_rows(host, rows_per_batch),
        decorations={"hostname": host.hostname, "uuid": host.hardware_uuid},
    )
    batch = logs_pb2.LogBatch(
        batch_id=f"bench-ceiling-{host_index}",
        kind=logs_pb2.RESULT,
        node_id=f"node-{host_index}",
        host_identifier=host.hostname,
        received_at=unix_time,
        data_json=orjson.dumps(records),
    )
    return flatten_batch(batch).rows


def process_rows(host: HostProfile, count: int) -> list[dict[str, str]]:
    """`count` rows of the processes table, varied from the host's own ones."""
    templates = host.table("processes") or []
    rows = []
    for number in range(count):
        row = dict(templates[number % len(templates)])
        row["pid"] = str(int(row["pid"]) + 1000 * (number // len(templates)))
        rows.append(row)
    return rows


def insert_batches(rows: list[Row], batch_rows: int) -> list[list[Row]]:
    return [rows[start : start + batch_rows] for start in range(0, len(rows), batch_rows)]


# --- the storage ceiling ------------------------------------------------------------------


def storage_ceiling(
    clickhouse_url: str,
    rows: int | list[Row] = DEFAULT_STORAGE_ROWS,
    *,
    batch_rows: int = DEFAULT_INSERT_BATCH_ROWS,
    max_seconds: float = DEFAULT_STORAGE_SECONDS,
    chdb_dir: Path | None = None,
) -> dict[str, Any]:
    """Insert rows into the log store raw and time it; stops early after `max_seconds`.

    `clickhouse_url` "" means chdb (in a child process, in `chdb_dir` or a temporary
    directory). `rows` is a row count (built by `ceiling_rows`) or the rows themselves.
    Returns {"backend", "server_version", "rows", "insert_batch_rows", "inserts",
    "seconds", "rows_per_s"}.
    """
    row_list = ceiling_rows(rows) if isinstance(rows, int) else rows
    batches = insert_batches(row_list, batch_rows)
    if clickhouse_url:
        figures = insert_into_server(clickhouse_url, batches, max_seconds)
    else:
        figures = insert_into_chdb_child(chdb_dir, batches, max_seconds)
    seconds = figures["seconds"]
    return {
        **figures,
        "insert_batch_rows": batch_rows,
        "rows_per_s": round(figures["rows"] / seconds, 1) if seconds > 0 else 0.0,
    }


def timed_inserts(
    insert: Callable[[list[Row]], None], batches: list[list[Row]], max_seconds: float
) -> dict[str, float | int]:
    """Call insert(batch) for each batch until done or out of time; count and time them."""
    inserted = inserts = 0
    started = time.perf_counter()
    for batch in batches:
        insert(batch)
        inserted += len(batch)
        inserts += 1
        if time.perf_counter() - started >= max_seconds:
            break
    return {"rows": inserted, "inserts": inserts, "seconds": time.perf_counter() - started}


def insert_into_server(url: str, batches: list[list[Row]], max_seconds: float) -> dict[str, Any]:
    """clickhouse-driver columnar inserts, as ingest's (18.16 hangs on inline VALUES)."""
    client = Client.from_url(client_url(url, "default"))
    try:
        version = str(client.execute("SELECT version()")[0][0])
        client.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DATABASE}")
        client.execute(f"CREATE DATABASE {SCRATCH_DATABASE}")
        try:
            # The very DDL of quarry.results, in a scratch database.
            client.execute(create_table(SCRATCH_DATABASE, RESULTS, is_modern(version), days=0))
            table = f"{SCRATCH_DATABASE}.{RESULTS_TABLE}"

            def insert(batch: list[Row]) -> None:
                client.execute(
                    f"INSERT INTO {table} ({', '.join(RESULT_COLUMNS)}) VALUES",
                    list(zip(*batch, strict=True)),
                    columnar=True,
                )

            figures = timed_inserts(insert, batches, max_seconds)
            stored = client.execute(f"SELECT count() FROM {table}")[0][0]
        finally:
            client.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DATABASE}")
    finally:
        client.disconnect()
    check_stored(stored, figures["rows"])
    return {"backend": "clickhouse-server", "server_version": version, **figures}


def insert_into_chdb_child(
    chdb_dir: Path | None, batches: list[list[Row]], max_seconds: float
) -> dict[str, Any]:
    """Run `insert_into_chdb` in a fresh process: it must own its chdb directory.

    The batches go through a file; the child prints its figures as one JSON line.
    """
    with tempfile.TemporaryDirectory(prefix="quarry-bench-chdb-") as scratch:
        directory = chdb_dir if chdb_dir is not None else Path(scratch) / "chdb"
        batches_file = Path(scratch) / "batches.json"
        batches_file.write_bytes(orjson.dumps(batches))
        command = [
            sys.executable,
            "-m",
            "bench.ceilings",
            str(directory),
            str(batches_file),
            str(max_seconds),
        ]
        child = subprocess.run(
            command, cwd=REPO_ROOT, env=repository_env(), capture_output=True, check=False
        )
    if child.returncode != 0:
        raise RuntimeError(f"chdb storage ceiling failed:\n{child.stderr.decode(errors='replace')}")
    return orjson.loads(child.stdout.splitlines()[-1])


def insert_into_chdb(directory: Path, batches: list[list[Row]], max_seconds: float) -> dict:
    """Ingest's own chdb insert (JSONCompactColumns) into the results table in `directory`."""
    store = EmbeddedClickHouseStore(directory)
    try:
        store.ensure_schema()
        version = store.version()
        table = f"{DATABASE}.{RESULTS_TABLE}"
        store.query(f"TRUNCATE TABLE {table}")  # a reused directory starts empty
        figures = timed_inserts(
            lambda batch: store.insert_rows(RESULTS_TABLE, RESULT_COLUMNS, batch),
            batches,
            max_seconds,
        )
        stored = store.query(f"SELECT count() FROM {table}").rows[0][0]
    finally:
        store.close()
    check_stored(int(stored), figures["rows"])
    return {"backend": "chdb", "server_version": version, **figures}


def check_stored(stored: int, inserted: int) -> None:
    if stored != inserted:
        raise RuntimeError(f"storage ceiling: inserted {inserted} rows but {stored} are stored")


def chdb_child_main(argv: list[str]) -> None:
    """The child side of `insert_into_chdb_child`: DIR BATCHES_FILE MAX_SECONDS."""
    directory, batches_file, max_seconds = argv
    batches = orjson.loads(Path(batches_file).read_bytes())
    figures = insert_into_chdb(Path(directory), batches, float(max_seconds))
    sys.stdout.write(orjson.dumps(figures).decode() + "\n")


if __name__ == "__main__":
    chdb_child_main(sys.argv[1:])
