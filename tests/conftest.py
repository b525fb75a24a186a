"""Shared fixtures: a real ClickHouse server for the whole session, and log-store backends."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.clickhouse_server import clickhouse_server

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
