"""`quarry sql` by role: only an admin's SQL may change the log store (docs/security.md).

The enroll and ingest services run as real processes on each log store (embedded chdb and
the ClickHouse 18.16 server). Each role (read-only, operator, admin) sends every kind of
statement; below admin (and for the service token) ClickHouse itself runs the query
read-only, refuses anything that writes, and the refusal is answered PERMISSION_DENIED and
audited as such.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.v1 import enroll_pb2, enroll_pb2_grpc, logs_pb2, logs_pb2_grpc
from quarry.access.admin_auth import ADMIN, OPERATOR, READ_ONLY
from quarry.serving.grpc_runtime import sync_channel
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.service_processes import REPO_ROOT, ServiceProcess

QUERY_METHOD = "/quarry.v1.LogStore/Query"
_tables = itertools.count(1)


class Cluster:
    """The enroll and ingest processes, and a token of each role."""

    def __init__(self, state_dir: Path, clickhouse_url: str) -> None:
        port_base = free_port_base()
        env = {"QUARRY_CLICKHOUSE_URL": clickhouse_url}
        self.enroll = ServiceProcess("enroll", state_dir, port_base, env)
        self.ingest = ServiceProcess("ingest", state_dir, port_base, env)
        self.state_dir, self.port_base = state_dir, port_base
        self.tokens: dict[str, str] = {}

    def start(self) -> Cluster:
        self.enroll.start()
        self.ingest.start()
        # The root token (QUARRY_ADMIN_TOKEN, see conftest) creates the role tokens.
        stub = enroll_pb2_grpc.EnrollServiceStub(sync_channel(self.enroll.addr))
        suffix = str(self.port_base)
        for role in (READ_ONLY, OPERATOR, ADMIN):
            request = enroll_pb2.CreateTokenRequest(name=f"{role}-{suffix}", role=role)
            self.tokens[role] = stub.CreateToken(request, timeout=30).value
        return self

    def stop(self) -> None:
        self.ingest.stop()
        self.enroll.stop()

    def name(self, role: str) -> str:
        return f"{role}-{self.port_base}"

    def sql(self, role: str, statement: str) -> logs_pb2.SqlResponse:
        """Query as role; raises grpc.RpcError when the call is refused."""
        channel = sync_channel(self.ingest.addr, self.tokens[role])
        stub = logs_pb2_grpc.LogStoreStub(channel)
        return stub.Query(logs_pb2.SqlRequest(sql=statement), timeout=60)

    def audit(self, role: str) -> list[enroll_pb2.AuditEntry]:
        stub = enroll_pb2_grpc.EnrollServiceStub(sync_channel(self.enroll.addr))
        request = enroll_pb2.ListAuditRequest(token_name=self.name(role), limit=10_000)
        entries = stub.ListAudit(request, timeout=30).entries
        return [e for e in entries if e.method == QUERY_METHOD]


@pytest.fixture(scope="module")
def cluster(log_store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("sql-roles"), log_store_url).start()
    try:
        yield running
    finally:
        running.stop()


def writes(table: str) -> list[str]:
    """A statement of every kind that changes the store or the server, on table."""
    return [
        f"INSERT INTO {table} (a) SELECT number FROM numbers(3)",
        "INSERT INTO quarry.status_logs SELECT * FROM quarry.status_logs",
        f"INSERT INTO FUNCTION file('forged.csv', 'CSV', 'a UInt64') SELECT a FROM {table}",
        f"CREATE TABLE {table}_new (a UInt64) ENGINE = Memory",
        "CREATE DATABASE forged",
        f"ALTER TABLE {table} ADD COLUMN b UInt8",
        f"ALTER TABLE {table} DELETE WHERE a = 1",
        f"OPTIMIZE TABLE {table}",
        f"RENAME TABLE {table} TO {table}_renamed",
        f"TRUNCATE TABLE {table}",
        f"DETACH TABLE {table}",
        f"DROP TABLE {table}",
        "SET max_threads = 1",
        "SYSTEM DROP MARK CACHE",
    ]


def reads(table: str) -> list[str]:
    return [
        f"SELECT count() FROM {table}",
        "SHOW TABLES FROM quarry",
        f"DESCRIBE TABLE {table}",
        f"EXISTS TABLE {table}",
    ]


def new_table(cluster: Cluster) -> str:
    """A table of this test's own with one row, made by the admin."""
    table = f"quarry.sql_roles_{cluster.port_base}_{next(_tables)}"
    for statement in (
        f"CREATE TABLE {table} (a UInt64) ENGINE = MergeTree ORDER BY a",
        f"INSERT INTO {table} (a) SELECT 7",
    ):
        assert not cluster.sql(ADMIN, statement).error
    return table


def refusal(cluster: Cluster, role: str, statement: str) -> grpc.RpcError | None:
    try:
        reply = cluster.sql(role, statement)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{role} ran {statement!r}: {reply}")


@pytest.mark.parametrize("role", [READ_ONLY, OPERATOR])
def test_below_admin_every_write_is_refused_reads_run_and_refusals_are_audited(
    cluster: Cluster, role: str
) -> None:
    table = new_table(cluster)
    for statement in reads(table):
        assert not cluster.sql(role, statement).error, statement
    refused = {statement: refusal(cluster, role, statement) for statement in writes(table)}
    for statement, error in refused.items():
        assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED, statement
        assert f"token {cluster.name(role)!r} ({role}) may only read" in str(error.details())
    # Nothing changed: the table is there, with its one row and its one column.
    assert cluster.sql(ADMIN, f"SELECT * FROM {table}").rows_json == ["[7]"]
    assert '["forged"]' not in cluster.sql(ADMIN, "SHOW DATABASES").rows_json
    assert not (Path(REPO_ROOT) / "forged.csv").exists()

    def audited() -> dict[str, str]:
        return {e.summary: e.outcome for e in cluster.audit(role)}

    expected = {f"sql={statement}": "PERMISSION_DENIED" for statement in writes(table)}
    expected |= {f"sql={statement}": "OK" for statement in reads(table)}
    entries = eventually(lambda: audited().items() >= expected.items(), timeout_s=30)
    assert entries, audited()


def test_an_admin_may_run_every_kind_of_statement(cluster: Cluster) -> None:
    table = new_table(cluster)
    for statement in [*reads(table), *admin_writes(table)]:
        reply = cluster.sql(ADMIN, statement)
        assert not reply.error, (statement, reply.error)
    assert cluster.sql(ADMIN, f"EXISTS TABLE {table}").rows_json == ["[0]"]

    def drop_audited_ok() -> bool:
        audited = {e.summary: e.outcome for e in cluster.audit(ADMIN)}
        return audited.get(f"sql=DROP TABLE {table}") == "OK"

    assert eventually(drop_audited_ok, timeout_s=30)


def admin_writes(table: str) -> list[str]:
    """The writes an admin runs in turn: each leaves the table for the next."""
    return [
        f"INSERT INTO {table} (a) SELECT number FROM numbers(3)",
        f"CREATE TABLE {table}_new (a UInt64) ENGINE = Memory",
        f"DROP TABLE {table}_new",
        f"ALTER TABLE {table} ADD COLUMN b UInt8",
        f"OPTIMIZE TABLE {table}",
        f"RENAME TABLE {table} TO {table}_renamed",
        f"RENAME TABLE {table}_renamed TO {table}",
        f"TRUNCATE TABLE {table}",
        "SET max_threads = 2",
        "SYSTEM DROP MARK CACHE",
        f"DROP TABLE {table}",
    ]


def test_quarry_s_own_processes_read_but_may_not_write(cluster: Cluster) -> None:
    """The service token ranks above admin for admin calls, but its SQL is read-only."""
    table = new_table(cluster)
    stub = logs_pb2_grpc.LogStoreStub(cluster.ingest.channel())
    assert stub.Query(logs_pb2.SqlRequest(sql=f"SELECT a FROM {table}")).rows_json == ["[7]"]
    with pytest.raises(grpc.RpcError) as refused:
        stub.Query(logs_pb2.SqlRequest(sql=f"DROP TABLE {table}"), timeout=60)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert cluster.sql(ADMIN, f"EXISTS TABLE {table}").rows_json == ["[1]"]


def test_the_cli_says_why_in_one_line(cluster: Cluster) -> None:
    env = {
        **os.environ,
        "QUARRY_STATE_DIR": str(cluster.state_dir),
        "QUARRY_PORT_BASE": str(cluster.port_base),
        "QUARRY_ADMIN_TOKEN": cluster.tokens[READ_ONLY],
    }
    result = subprocess.run(
        [sys.executable, "-m", "quarry", "sql", "DROP TABLE quarry.status_logs"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "PERMISSION_DENIED" in line and "may only read" in line
    assert cluster.sql(ADMIN, "EXISTS TABLE quarry.status_logs").rows_json == ["[1]"]
