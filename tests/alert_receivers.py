"""Where the tests' alerts go: Debian's Alertmanager started on a free port, and a webhook
receiver that fails its first requests on purpose (to prove retries and at-least-once)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.free_ports import free_port_base

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
CONFIG = """
route:
  receiver: nobody
receivers:
  - name: nobody
"""


@dataclass
class Alertmanager:
    url: str

    def alerts(self) -> list[dict]:
        """What GET /api/v2/alerts answers (the active alerts)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            return json.loads(response.read())


@contextmanager
def alertmanager() -> Iterator[Alertmanager]:
    if not Path(ALERTMANAGER).exists():
        reason = f"no {ALERTMANAGER}: apt-get install prometheus-alertmanager"
        # CI installs it (.ci/run): there a missing Alertmanager is an error, never a skip.
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port_base()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "alertmanager.yml"
        config.write_text(CONFIG)
        log = (Path(folder) / "alertmanager.log").open("w")
        process = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={folder}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        manager = Alertmanager(f"http://127.0.0.1:{port}")
        try:
            _wait_ready(manager, process, Path(folder) / "alertmanager.log")
            yield manager
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()


def _wait_ready(manager: Alertmanager, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"alertmanager exited:\n{log.read_text()}")
        try:
            urllib.request.urlopen(f"{manager.url}/-/ready", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"alertmanager not ready:\n{log.read_text()}")


@dataclass
class WebhookReceiver:
    """Answers 500 to its first `fail_first` requests, then 200; keeps every request."""

    url: str
    fail_first: int
    # (status, Idempotency-Key, body, when it arrived: time.time())
    requests: list[tuple[int, str, dict, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered(self) -> list[dict]:
        """The bodies it accepted (answered 200), in order."""
        with self.lock:
            return [body for status, _, body, _ in self.requests if status == 200]

    def arrivals(self) -> list[tuple[float, dict]]:
        """(when, body) of each request it accepted."""
        with self.lock:
            return [(at, body) for status, _, body, at in self.requests if status == 200]

    def refused(self) -> int:
        with self.lock:
            return sum(1 for status, *_ in self.requests if status != 200)


@contextmanager
def webhook_receiver(fail_first: int) -> Iterator[WebhookReceiver]:
    port = free_port_base()
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}/hook", fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with receiver.lock:
                status = 500 if len(receiver.requests) < receiver.fail_first else 200
                key = self.headers["Idempotency-Key"]
                receiver.requests.append((status, key, body, time.time()))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
