"""Starts a whole Quarry cluster the way `quarry up` does, for end-to-end tests.

`quarry up` runs as a real subprocess on free ports with its own state directory;
its output goes to a file that is shown when a test fails. `cli()` runs admin
commands against it exactly as a person would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from quarry.access.admin_auth import service_token
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import aio_channel, sync_channel
from quarry.serving.service_entry import service_of
from tests.free_ports import free_port_base

READY_LINE = "Quarry is running."
START_TIMEOUT_S = 120.0


@dataclass
class QuarryCluster:
    state_dir: Path
    port_base: int
    clickhouse_url: str
    output: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def gateway(self) -> str:
        return f"localhost:{self.port_base}"

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "tls" / "ca.pem"

    @property
    def enroll_secret(self) -> str:
        return (self.state_dir / "enroll_secret").read_text().strip()

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env())

    def channel(self, service: str) -> grpc.Channel:
        """A channel to one of the cluster's services, carrying the cluster's service token."""
        settings = self.settings
        return sync_channel(settings.service_addr(service), service_token(settings), settings)

    def aio_channel(self, service: str) -> grpc.aio.Channel:
        settings = self.settings
        return aio_channel(settings.service_addr(service), service_token(settings), settings)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
        env.update(
            QUARRY_STATE_DIR=str(self.state_dir),
            QUARRY_PORT_BASE=str(self.port_base),
            QUARRY_CLICKHOUSE_URL=self.clickhouse_url,
            # Quick batching keeps tests short; production defaults are in settings.py.
            QUARRY_CHECKIN_FLUSH_INTERVAL_S="0.2",
            # Scheduled host queries off: a test's distributed reads hand out only its own
            # live queries. Tests of vitals and software turn them on (test_host_queries.py).
            **SCHEDULED_HOST_QUERIES_OFF,
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `quarry ARGS...` against this cluster."""
        result = subprocess.run(
            [sys.executable, "-m", "quarry", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"quarry {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def sql(self, query: str) -> list[dict]:
        return self.cli_json("sql", query)  # type: ignore[return-value]

    def service_pid(self, service: str) -> int:
        """The pid of one service process that `quarry up` started (from /proc)."""
        assert self.process is not None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            argv = [part.decode(errors="replace") for part in cmdline]
            if ppid == self.process.pid and service_of(argv) == service:
                return int(stat.parent.name)
        raise LookupError(f"no {service} process under quarry up")

    def kill_service(self, service: str) -> None:
        """SIGKILL one service, as a crash would; `quarry up` restarts it."""
        os.kill(self.service_pid(service), signal.SIGKILL)

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quarry", "up"],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._copy_output, args=(ready,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"quarry up did not start:\n{self.log_text()}")

    def _copy_output(self, ready: threading.Event) -> None:
        """Copy everything quarry up prints to the log file, so the pipe never fills."""
        assert self.process and self.process.stdout
        with self.output.open("a") as out:
            for line in self.process.stdout:
                out.write(line)
                out.flush()
                if READY_LINE in line:
                    ready.set()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def live_query_report(result: subprocess.CompletedProcess[str]) -> dict:
    """The account that ends `quarry query run --json` (JSON lines, docs/live-queries.md),
    checked against the command's exit code: 0 every host answered, 3 some, 4 none."""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    reports = [line for line in lines if line["type"] == "report"]
    assert len(reports) == 1, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    counts = reports[0]["counts"]
    answered, targeted = counts["answered"], sum(counts.values())
    expected = 0 if answered == targeted else 3 if answered else 4
    assert result.returncode == expected, result.stderr
    return reports[0]


SCHEDULED_HOST_QUERIES_OFF = {
    "QUARRY_HOST_VITALS_INTERVAL_S": "0",
    "QUARRY_HOST_SOFTWARE_INTERVAL_S": "0",
}


@contextmanager
def quarry_cluster(
    tmp_dir: Path,
    clickhouse_url: str = "",
    extra_env: dict[str, str] | None = None,
    port_base: int | None = None,
) -> Iterator[QuarryCluster]:
    """A running cluster under tmp_dir, on `port_base` or else a free base."""
    cluster = QuarryCluster(
        state_dir=tmp_dir / "state",
        port_base=port_base or free_port_base(),
        clickhouse_url=clickhouse_url,
        output=tmp_dir / "quarry-up.log",
        extra_env=extra_env or {},
    )
    cluster.output.touch()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
