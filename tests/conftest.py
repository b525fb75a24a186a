"""Shared fixtures: real ClickHouse and PostgreSQL servers for the whole session, and the
backends (log stores, service state) tests run against."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.clickhouse_server import clickhouse_server
from tests.postgres_server import fresh_database, postgres_server

# Services started by tests (ServiceProcess) make this their root admin token, and the
# test process's own admin channels (sync_channel) present it (docs/security.md).
os.environ.setdefault("QUARRY_ADMIN_TOKEN", "quarry-tests-root-admin-token")

# The two log stores every log-pipeline test runs against.
BACKENDS = ("chdb", "clickhouse-server")


@pytest.fixture(scope="session")
def clickhouse_url() -> Iterator[str]:
    """A running ClickHouse server (Debian's 18.16 here), started once per session."""
    with clickhouse_server() as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def log_store_url(request: pytest.FixtureRequest) -> str:
    """ "" for embedded chdb, else the ClickHouse server's URL."""
    if request.param == "chdb":
        return ""
    return request.getfixturevalue("clickhouse_url")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A running PostgreSQL server (a private throwaway cluster here), once per session."""
    with postgres_server() as url:
        yield url


# The state backends of the enroll, config and distributed services (docs/deploy.md).
STATE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module", params=STATE_BACKENDS)
def state_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment for service processes: {} for SQLite files, else a fresh PostgreSQL
    database (QUARRY_DATABASE_URL) for this module's services."""
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_url")
    return {"QUARRY_DATABASE_URL": fresh_database(server)}
