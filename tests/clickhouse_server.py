"""A real ClickHouse server for tests: the one named by the environment, or a private one.

`clickhouse_server()` yields a `clickhouse://` URL. With QUARRY_TEST_CLICKHOUSE_URL set it
uses that server; otherwise it starts Debian's clickhouse-server on free ports with its own
config and data under a temporary directory, and stops it afterwards. With neither, it
skips the test, except on CI (CI=true), where a missing server is an error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVER_BINARY = Path("/usr/sbin/clickhouse-server")
USERS_CONFIG = Path("/etc/clickhouse-server/users.xml")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

CONFIG_TEMPLATE = """<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{root}/log/server.log</log>
        <errorlog>{root}/log/server.err.log</errorlog>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <interserver_http_port>{interserver_port}</interserver_http_port>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <users_config>{users_config}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>536870912</mark_cache_size>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def clickhouse_server() -> Iterator[str]:
    """Yield the URL of a running ClickHouse server (see the module docstring)."""
    url = os.environ.get("QUARRY_TEST_CLICKHOUSE_URL", "")
    if url:
        yield url
        return
    if not SERVER_BINARY.exists():
        reason = f"no ClickHouse server: set QUARRY_TEST_CLICKHOUSE_URL or install {SERVER_BINARY}"
        if os.environ.get("CI") == "true":
            raise RuntimeError(reason)
        pytest.skip(reason)
    with (
        tempfile.TemporaryDirectory(prefix="quarry-clickhouse-") as root,
        private_server(Path(root)) as tcp_port,
    ):
        yield f"clickhouse://default:@127.0.0.1:{tcp_port}/quarry"


@contextmanager
def private_server(root: Path) -> Iterator[int]:
    """Run clickhouse-server with its own config under root; yield its native TCP port."""
    tcp_port, http_port, interserver_port = free_port(), free_port(), free_port()
    for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
        (root / sub).mkdir()
    config = root / "config.xml"
    config.write_text(
        CONFIG_TEMPLATE.format(
            root=root,
            tcp_port=tcp_port,
            http_port=http_port,
            interserver_port=interserver_port,
            users_config=USERS_CONFIG,
        )
    )
    process = subprocess.Popen(
        [str(SERVER_BINARY), f"--config-file={config}"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(process, http_port, root)
        yield tcp_port
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(process: subprocess.Popen[bytes], http_port: int, root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors = (root / "log" / "server.err.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"clickhouse-server exited with {process.returncode}: {errors}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ping", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"clickhouse-server not ready on port {http_port} in {START_TIMEOUT_S}s")
