"""Start one Quarry service as a real separate process for a test, and stop it.

`quarry serve <service>` with QUARRY_STATE_DIR and QUARRY_PORT_BASE set, so each test
module gets its own state and ports. Output goes to a log file, shown when a start
fails so the reason is in the test report.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from quarry.access.admin_auth import service_token
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ServiceProcess:
    """One service (`enroll`, `config`, ..., `gateway`) running as `quarry serve <name>`."""

    def __init__(
        self, name: str, state_dir: Path, port_base: int, extra_env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.port_base = port_base
        self.settings = Settings.from_env(
            {
                "QUARRY_STATE_DIR": str(state_dir),
                "QUARRY_PORT_BASE": str(port_base),
                **(extra_env or {}),
            }
        )
        # Where this process listens (not QUARRY_<NAME>_ADDR: that is where its clients go).
        self.addr = f"{self.settings.bind_host}:{getattr(self.settings, f'{name}_port')}"
        self.log_path = state_dir / f"{name}.log"
        self._extra_env = extra_env or {}
        self._process: subprocess.Popen[bytes] | None = None

    def channel(self) -> grpc.Channel:
        """A channel to this service that carries the service token, as Quarry's processes do."""
        return sync_channel(self.addr, service_token(self.settings), self.settings)

    def start(self) -> ServiceProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "QUARRY_STATE_DIR": str(self.state_dir),
            "QUARRY_PORT_BASE": str(self.port_base),
            "PYTHONUNBUFFERED": "1",
            # Distributed reads hand out only the test's own live queries unless it asks
            # for scheduled host queries (docs/inventory.md).
            "QUARRY_HOST_VITALS_INTERVAL_S": "0",
            "QUARRY_HOST_SOFTWARE_INTERVAL_S": "0",
            **self._extra_env,
        }
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "quarry", "serve", self.name],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        host, port = self.addr.rsplit(":", 1)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_text()}")
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.addr}:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def kill(self) -> None:
        """SIGKILL, as a crash would; stop() then reaps it."""
        if self._process is not None:
            self._process.kill()

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stop() then waits for the exit)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode
