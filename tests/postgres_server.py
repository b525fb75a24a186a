"""A real PostgreSQL server for tests: the one named by the environment, or a private one.

`postgres_server()` yields a `postgresql://` URL of a database the tests may use freely.
With QUARRY_TEST_POSTGRES_URL set it uses that server; otherwise it creates a
throwaway cluster of Debian's postgresql-15 under a temporary directory (initdb, trust
authentication, fsync off, its own socket directory and port), run as the `postgres`
user, and stops and removes it afterwards. Without either it skips the test, except on
CI (CI=true), where a missing server is an error.

`fresh_database(url)` makes an empty database on that server for one service cluster,
so each test module starts from nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.clickhouse_server import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"
START_TIMEOUT_S = 30


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a running PostgreSQL server (see the module docstring)."""
    url = os.environ.get("QUARRY_TEST_POSTGRES_URL", "")
    if url:
        yield url
        return
    if not (PG_BIN / "initdb").exists():
        reason = f"no PostgreSQL: set QUARRY_TEST_POSTGRES_URL or install postgresql ({PG_BIN})"
        if os.environ.get("CI") == "true":
            raise RuntimeError(reason)
        pytest.skip(reason)
    with throwaway_cluster() as (_, port):
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"


@contextmanager
def throwaway_cluster() -> Iterator[tuple[Path, int]]:
    """A private cluster in a new directory (outside pytest's, which the server user cannot
    enter); yields (its directory, its port); stops and removes it after."""
    root = Path(tempfile.mkdtemp(prefix="quarry-postgres-"))
    try:
        with private_cluster(root) as port:
            yield root, port
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def private_cluster(root: Path) -> Iterator[int]:
    """initdb and pg_ctl start a cluster under root; yield its port; stop it after."""
    if os.geteuid() == 0:
        shutil.chown(root, SERVER_USER)
    port = free_port()
    _as_server_user(
        "initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "--no-sync",
        "-E", "UTF8",
    )  # fmt: skip
    start_cluster(root, port)
    try:
        yield port
    finally:
        stop_cluster(root)


def start_cluster(root: Path, port: int) -> None:
    """Start (or start again) the cluster under root on port."""
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    options += " -c max_connections=200 -c synchronous_commit=off -c full_page_writes=off"
    _as_server_user(
        "pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w",
        "-t", str(START_TIMEOUT_S), "-o", options, "start",
    )  # fmt: skip


def stop_cluster(root: Path) -> None:
    """Stop the cluster under root (fast: open connections are cut, as in an outage)."""
    _as_server_user("pg_ctl", "-D", str(root / "data"), "-m", "fast", "-w", "stop")


def _as_server_user(program: str, *args: str) -> None:
    command = [str(PG_BIN / program), *args]
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root.
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}")


def fresh_database(server_url: str, prefix: str = "quarry") -> str:
    """A new empty database on the server; returns its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))
