"""The detection engine on shared state (PostgreSQL) and SQLite: one leader among replicas,
each window evaluated exactly once even when two replicas run it, and the delivery
outbox's backoff. A unit test of engine.py: the logs are a stand-in reader that answers
the rows of the window asked for, like ingest's LogStore would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from detection_service.delivery import Delivery, destination_names
from detection_service.engine import Engine, RuleFailed
from detection_service.server import LEADER_LOCK_KEY
from detection_service.store import SERVICE_SCHEMA, DetectionStore
from osquery_config.detections import Detection
from protos.v1 import detection_pb2, detection_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.database import StateDatabase, open_state_database
from quarry.state.service_database import migrate_service
from tests.free_ports import free_port_base
from tests.polling import eventually
from tests.postgres_server import fresh_database
from tests.service_processes import ServiceProcess

RULE = Detection(
    name="tmp",
    sql="SELECT host_identifier, path FROM quarry.results WHERE {arrived}",
    schedule=5,
    dedup_key=("host_identifier", "path"),
)


class StoredRows:
    """Rows with their stored_at second; answers a window's rows as the rule's SQL would."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, str]] = []
        self.queries: list[str] = []

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        self.queries.append(sql)
        start = int(sql.split("stored_at >= toDateTime(")[1].split(")")[0])
        end = int(sql.split("stored_at < toDateTime(")[1].split(")")[0])
        return ["host_identifier", "path"], [
            [host, path] for at, host, path in self.rows if start <= at < end
        ]


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[StateDatabase]]:
    """Two replicas' handles on one detection database."""
    env = {"QUARRY_STATE_DIR": str(tmp_path)}
    if request.param == "postgresql":
        env["QUARRY_DATABASE_URL"] = fresh_database(request.getfixturevalue("postgres_url"))
    settings = Settings.from_env(env)
    opened = [open_state_database(settings, "detection") for _ in range(2)]
    migrate_service(opened[0], SERVICE_SCHEMA)
    yield opened
    for database in opened:
        database.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine(database: StateDatabase, rows: StoredRows, clock: Clock) -> Engine:
    made = Engine(
        DetectionStore(database),
        rows,
        destination_names("", "http://127.0.0.1:9/hook"),
        settle_s=10,
        max_window_s=3600,
        leads=lambda: database.holds_lead(LEADER_LOCK_KEY),
        clock=clock,
    )
    made.set_rules([RULE])
    return made


def test_one_replica_leads_and_another_takes_over_when_it_goes(
    databases: list[StateDatabase],
) -> None:
    first, second = databases
    assert first.holds_lead(LEADER_LOCK_KEY)
    if not first.shared:
        return  # SQLite: one process owns the file, and so leads
    assert not second.holds_lead(LEADER_LOCK_KEY)
    first.close()
    # PostgreSQL releases a session's locks as its backend ends, just after the close.
    assert eventually(lambda: second.holds_lead(LEADER_LOCK_KEY))


def test_each_row_is_evaluated_once_even_when_two_replicas_run_a_window(
    databases: list[StateDatabase],
) -> None:
    rows, clock = StoredRows(), Clock(1_000_000)
    a, b = (engine(database, rows, clock) for database in databases)
    store = DetectionStore(databases[0])

    async def scenario() -> None:
        a.leader = True
        states = a._sync_rules()  # the rule starts at now - settle: rows from then on
        rows.rows += [(999_995, "h1", "/tmp/x"), (999_996, "h1", "/tmp/x")]
        # A row that arrives late (replayed from a spool) is stamped when it is stored.
        clock.now += 30
        rows.rows.append((1_000_012, "h2", "/tmp/y"))
        # Both replicas believe they lead and run the same window from the same state.
        assert await a.run_rule(RULE, states["tmp"])
        assert await b.run_rule(RULE, states["tmp"])

    asyncio.run(scenario())
    alerts = {(alert.host_identifier, alert.hits) for alert in store.open_alerts()}
    assert alerts == {("h1", 2), ("h2", 1)}
    assert store.rule_states()["tmp"].watermark == 1_000_020
    assert store.rule_states()["tmp"].total_hits == 3
    # One firing event each for ClickHouse and the webhook, not two.
    assert len(store.due(2_000_000)) == 4


def test_a_rule_behind_catches_up_in_windows_of_at_most_max_window(
    databases: list[StateDatabase],
) -> None:
    rows, clock = StoredRows(), Clock(1_000_000)
    runner = engine(databases[0], rows, clock)
    runner.max_window_s = 100
    states = runner._sync_rules()
    clock.now += 250
    caught_up = asyncio.run(runner.run_rule(RULE, states["tmp"]))
    assert not caught_up
    assert runner.store.rule_states()["tmp"].watermark == 999_990 + 100


def test_a_failed_delivery_waits_longer_each_time_up_to_the_maximum(
    databases: list[StateDatabase],
) -> None:
    store = DetectionStore(databases[0])
    delivery = Delivery(store, _never, "", 60, retry_base_s=1, retry_max_s=10)
    assert [delivery._backoff(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]


async def _never(events: list) -> None:
    raise AssertionError("not called")


class FailingOnce(StoredRows):
    """ClickHouse refuses the first query (an outage), then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def query(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        if not self.failed:
            self.failed = True
            raise RuleFailed("Code: 210. DB::NetException: Connection refused")
        return await super().query(sql)


def test_a_failed_run_keeps_its_watermark_so_no_row_is_skipped(
    databases: list[StateDatabase],
) -> None:
    rows, clock = FailingOnce(), Clock(1_000_000)
    runner = engine(databases[0], rows, clock)
    states = runner._sync_rules()
    rows.rows.append((999_995, "h1", "/tmp/x"))
    clock.now += 30
    asyncio.run(runner.run_rule(RULE, states["tmp"]))
    failed = runner.store.rule_states()["tmp"]
    assert failed.watermark == 999_990 and "Connection refused" in failed.last_error
    asyncio.run(runner.run_rule(RULE, failed))
    after = runner.store.rule_states()["tmp"]
    assert after.watermark == 1_000_020 and after.last_error == ""
    assert [a.host_identifier for a in runner.store.open_alerts()] == ["h1"]


def test_alerts_resolve_after_quiet_and_when_their_rule_is_removed(
    databases: list[StateDatabase],
) -> None:
    rows, clock = StoredRows(), Clock(1_000_000)
    runner = engine(databases[0], rows, clock)
    states = runner._sync_rules()
    rows.rows += [(999_995, "h1", "/tmp/x")]
    clock.now += 30
    asyncio.run(runner.run_rule(RULE, states["tmp"]))
    assert runner.resolve_quiet() == 0  # hit 30 s ago, resolve_after is an hour
    clock.now += RULE.resolve_after
    assert runner.resolve_quiet() == 1
    assert runner.store.open_alerts() == []
    # A rule taken out of the config: its open alerts resolve at once.
    rows.rows += [(int(clock.now) - 15, "h2", "/tmp/y")]
    clock.now += 30
    asyncio.run(runner.run_rule(RULE, runner.store.rule_states()["tmp"]))
    assert [a.host_identifier for a in runner.store.open_alerts()] == ["h2"]
    runner.set_rules([])
    assert runner.resolve_quiet() == 1
    resolved = [e.payload for e in runner.store.due(10**10) if e.payload["event"] == "resolved"]
    assert sorted(e["host_identifier"] for e in resolved) == ["h1", "h1", "h2", "h2"]


# Two detection service processes on one PostgreSQL database.


def listed_leader(process: ServiceProcess) -> bool:
    admin = os.environ["QUARRY_ADMIN_TOKEN"]  # the tests' root token (tests/conftest.py)
    with sync_channel(process.addr, admin, process.settings) as channel:
        stub = detection_pb2_grpc.DetectionServiceStub(channel)
        return stub.ListDetections(detection_pb2.ListDetectionsRequest(), timeout=10).leader


def test_two_replicas_on_postgresql_elect_one_leader_and_the_other_takes_over(
    postgres_url: str, tmp_path: Path
) -> None:
    env = {"QUARRY_DATABASE_URL": fresh_database(postgres_url)}
    replicas = [
        ServiceProcess("detection", tmp_path / name, free_port_base(), env) for name in "ab"
    ]
    try:
        for replica in replicas:
            replica.start()
        # Neither finds config or ingest (not started): each still takes part in the election.
        assert eventually(lambda: sorted(map(listed_leader, replicas)) == [False, True], 30)
        leader = next(r for r in replicas if listed_leader(r))
        other = next(r for r in replicas if r is not leader)
        leader.kill()
        assert eventually(lambda: listed_leader(other), 30)
    finally:
        for replica in replicas:
            replica.stop()


def test_windows_end_by_the_stores_clock_when_this_hosts_runs_ahead(
    databases: list[StateDatabase],
) -> None:
    rows, clock = StoredRows(), Clock(1_000_000)
    runner = engine(databases[0], rows, clock)
    store_now = [999_000]  # ClickHouse's clock, 1,000 s behind this host's

    async def store_clock() -> int:
        return store_now[0]

    runner.store_clock = store_clock

    async def scenario() -> None:
        runner.leader = True
        await runner.tick()  # the rule starts at the store's now - settle
        # Stamped by the store after the start: by this host's clock, long "past".
        rows.rows.append((999_005, "h1", "/tmp/x"))
        store_now[0] += 30
        await runner.run_rule(RULE, runner.store.rule_states()["tmp"])

    runner.leads = lambda: True
    asyncio.run(scenario())
    assert runner.store.rule_states()["tmp"].watermark == 999_020
    assert [a.host_identifier for a in runner.store.open_alerts()] == ["h1"]
