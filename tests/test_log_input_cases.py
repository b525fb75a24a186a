"""Log input as osquery really sends it, end to end, row for row.

Each test is one shape of logger POST that osqueryd produces (gzip bodies, full batches,
the largest line, bytes that are not UTF-8, numerics, both decoration placements,
pre-5.10 status lines, stray non-object items) sent by the osquery emulator through the
real HTTPS gateway, ZeroMQ and ingest into the real log store (chdb and Debian's ClickHouse
18.16 server), then read back with `quarry sql` and compared with the exact rows expected.

The three result formats (event, batch/diffResults, snapshot) in one batch, duplicates and
outages are covered in test_end_to_end.py (`test_result_and_status_logs_land_in_clickhouse`
and the tests after it); they are not repeated here.
"""

from __future__ import annotations

import asyncio
import itertools
import string
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import orjson
import pytest

from quarry.runtime.clickhouse_sql import sql_string
from quarry.runtime.settings import Settings
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.emulator.node import MAX_LOG_LINE_BYTES, LogRecord
from tests.quarry_cluster import QuarryCluster, quarry_cluster

NOW = 1_736_072_430
PROCESS_ROW = {"name": "sshd", "pid": "812"}
_host_numbers = itertools.count(1)

T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(
    log_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry"), log_store_url) as running:
        yield running


# --- sending --------------------------------------------------------------------------


def new_node(cluster: QuarryCluster, **options: Any) -> OsqueryNode:
    """A fresh emulated host with an identifier no other test (or run) uses."""
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
    defaults: dict[str, Any] = {
        "server": cluster.gateway,
        "ca_file": cluster.ca_cert,
        "enroll_secret": cluster.enroll_secret,
        "profile": profile,
        "host_identifier": profile.hardware_uuid.lower(),
        "retry_time_scale": 0,
    }
    return OsqueryNode(**{**defaults, **options})


def post_from_new_host(
    cluster: QuarryCluster,
    log_type: str,
    make_records: Callable[[str], Sequence[LogRecord]],
    *,
    compress: bool = False,
) -> str:
    """One logger POST of `make_records(host)`, which must succeed; returns the host."""

    async def scenario() -> str:
        async with new_node(cluster, logger_tls_compress=compress) as node:
            host = node.host_identifier
            records = make_records(host)
            assert await node.send_logs(log_type, records), node.last_error
            return host

    return asyncio.run(scenario())


# --- reading back ---------------------------------------------------------------------


def wait_for_rows(read: Callable[[], list[T]], count: int, timeout_s: float = 30.0) -> list[T]:
    """Rows once `count` are there: the ack means spooled, the insert follows shortly."""
    deadline = time.monotonic() + timeout_s
    rows = read()
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = read()
    return rows


def stored_results(cluster: QuarryCluster, host: str, count: int) -> list[dict[str, Any]]:
    """This host's rows in quarry.results, columns and decorations as dicts.

    Sorted by name, action, then columns, so tests can list the rows they expect.
    """

    def read() -> list[dict[str, Any]]:
        return cluster.sql(
            "SELECT name, action, column_names, column_values, decoration_names, "
            "decoration_values, numerics, counter, toUnixTimestamp(unix_time) AS unix_time "
            f"FROM quarry.results WHERE host_identifier = {sql_string(host)}"
        )

    rows = [
        {
            "name": row["name"],
            "action": row["action"],
            "columns": dict(zip(row["column_names"], row["column_values"], strict=True)),
            "decorations": dict(
                zip(row["decoration_names"], row["decoration_values"], strict=True)
            ),
            "numerics": row["numerics"],
            "counter": row["counter"],
            "unix_time": row["unix_time"],
        }
        for row in wait_for_rows(read, count)
    ]
    return sorted(rows, key=lambda row: (row["name"], row["action"], orjson.dumps(row["columns"])))


def stored_status_logs(cluster: QuarryCluster, host: str, count: int) -> list[dict[str, Any]]:
    """This host's rows in quarry.status_logs, decorations as a dict, sorted by message."""

    def read() -> list[dict[str, Any]]:
        return cluster.sql(
            "SELECT toUnixTimestamp(unix_time) AS unix_time, calendar_time, severity, "
            "filename, line, message, version, decoration_names, decoration_values "
            f"FROM quarry.status_logs WHERE host_identifier = {sql_string(host)} "
            "ORDER BY message"
        )

    rows = wait_for_rows(read, count)
    for row in rows:
        names, values = row.pop("decoration_names"), row.pop("decoration_values")
        row["decorations"] = dict(zip(names, values, strict=True))
    return rows


def result_row(
    name: str,
    columns: dict[str, str],
    *,
    action: str = "added",
    decorations: dict[str, str] | None = None,
    numerics: int = 0,
    counter: int = 0,
) -> dict[str, Any]:
    """A quarry.results row as `stored_results` returns it."""
    return {
        "name": name,
        "action": action,
        "columns": columns,
        "decorations": decorations or {},
        "numerics": numerics,
        "counter": counter,
        "unix_time": NOW,
    }


def ingest_skipped_records(cluster: QuarryCluster) -> float:
    """quarry_ingest_skipped_records_total, read from the ingest process's /metrics."""
    settings = Settings.from_env(cluster.env())
    url = f"http://{settings.bind_host}:{settings.metrics_port('ingest')}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("quarry_ingest_skipped_records_total "):
            return float(line.split()[1])
    raise AssertionError(f"no quarry_ingest_skipped_records_total at {url}")


# --- 1. gzip bodies (--logger_tls_compress) -------------------------------------------


def test_gzip_bodies_are_stored_like_plain_ones(cluster: QuarryCluster) -> None:
    def records(host: str) -> list[LogRecord]:
        return log_records.event_records(
            "gzip_procs", host, NOW, added=[PROCESS_ROW], removed=[{"name": "cron", "pid": "7"}]
        )

    def statuses(host: str) -> list[LogRecord]:
        return [log_records.status_record(host, NOW, "gzipped status", line=52)]

    host = post_from_new_host(cluster, "result", records, compress=True)
    assert stored_results(cluster, host, 2) == [
        result_row("gzip_procs", PROCESS_ROW),
        result_row("gzip_procs", {"name": "cron", "pid": "7"}, action="removed"),
    ]
    host = post_from_new_host(cluster, "status", statuses, compress=True)
    assert [row["message"] for row in stored_status_logs(cluster, host, 1)] == ["gzipped status"]


# --- 2. osquery's limits: 1024 lines per POST, 1 MiB per line --------------------------


def test_a_full_batch_of_1024_lines_is_stored_line_for_line(cluster: QuarryCluster) -> None:
    def records(host: str) -> list[LogRecord]:
        return [
            log_records.event_record("full_batch", host, NOW, {"i": str(i)}) for i in range(1024)
        ]

    host = post_from_new_host(cluster, "result", records, compress=True)
    rows = stored_results(cluster, host, 1024)
    assert sorted(int(row["columns"]["i"]) for row in rows) == list(range(1024))
    assert {row["name"] for row in rows} == {"full_batch"}


def largest_line_value(host: str) -> str:
    """A column value that makes its event line exactly --logger_tls_max_linesize bytes."""
    empty = orjson.dumps(log_records.event_record("big_line", host, NOW, {"blob": ""}))
    pattern = string.ascii_letters + string.digits
    size = MAX_LOG_LINE_BYTES - len(empty)
    return (pattern * (size // len(pattern) + 1))[:size]


def test_a_line_of_the_largest_size_osquery_sends_is_stored_whole(
    cluster: QuarryCluster,
) -> None:
    def records(host: str) -> list[LogRecord]:
        record = log_records.event_record("big_line", host, NOW, {"blob": largest_line_value(host)})
        assert len(orjson.dumps(record)) == MAX_LOG_LINE_BYTES  # one byte more: osquery drops it
        return [record]

    host = post_from_new_host(cluster, "result", records)
    assert stored_results(cluster, host, 1) == [
        result_row("big_line", {"blob": largest_line_value(host)})
    ]


# --- 3. bytes that are not UTF-8 ------------------------------------------------------


def line_with_raw_bytes(record: dict[str, Any], placeholder: str, raw: bytes) -> bytes:
    """The record's JSON with `raw` where `placeholder` was, as rapidjson writes table bytes."""
    return orjson.dumps(record).replace(placeholder.encode(), raw)


def test_bytes_that_are_not_utf8_become_replacement_characters_and_the_rest_is_kept(
    cluster: QuarryCluster,
) -> None:
    """Snapshot values are not escaped by osquery, so invalid bytes reach the wire raw (§8.6)."""

    def records(host: str) -> list[LogRecord]:
        snapshot = log_records.snapshot_record(
            "raw_bytes",
            host,
            NOW,
            [{"path": "/tmp/caf@@", "pid": "1"}, {"path": "/tmp/ok", "pid": "2"}],
        )
        event = log_records.event_record("raw_bytes_event", host, NOW, PROCESS_ROW)
        return [line_with_raw_bytes(snapshot, "@@", b"\xff\xfe"), event]

    host = post_from_new_host(cluster, "result", records)
    assert stored_results(cluster, host, 3) == [
        result_row("raw_bytes", {"path": "/tmp/caf\ufffd\ufffd", "pid": "1"}, action="snapshot"),
        result_row("raw_bytes", {"path": "/tmp/ok", "pid": "2"}, action="snapshot"),
        result_row("raw_bytes_event", PROCESS_ROW),
    ]


def test_a_status_message_with_bytes_that_are_not_utf8_is_kept(cluster: QuarryCluster) -> None:
    def records(host: str) -> list[LogRecord]:
        status = log_records.status_record(host, NOW, "cannot open /home/@@/x")
        return [line_with_raw_bytes(status, "@@", b"j\xe9r\xf4me")]

    host = post_from_new_host(cluster, "status", records)
    [row] = stored_status_logs(cluster, host, 1)
    assert row["message"] == "cannot open /home/j\ufffdr\ufffdme/x"
    assert (row["severity"], row["filename"], row["line"]) == (0, "scheduler.cpp", 100)


# --- 4. numerics on and off -----------------------------------------------------------

TYPED_ROW = {
    "big": 2**63 - 1,
    "load": 1.5,
    "name": "init",
    "nothing": None,
    "pid": 1,
    "ratio": 2.0,
    "signed": -3,
}
TYPED_ROW_AS_LOGGED = {
    "big": "9223372036854775807",
    "load": "1.5",
    "name": "init",
    "nothing": "",
    "pid": "1",
    "ratio": "2.0",
    "signed": "-3",
}


@pytest.mark.parametrize("numerics", [True, False], ids=["numerics-on", "numerics-off"])
def test_numerics_on_and_off_store_the_same_text_and_the_flag(
    cluster: QuarryCluster, numerics: bool
) -> None:
    def records(host: str) -> list[LogRecord]:
        record = log_records.event_record("typed", host, NOW, TYPED_ROW, numerics=numerics)
        assert isinstance(record["columns"]["pid"], int if numerics else str)
        return [record]

    host = post_from_new_host(cluster, "result", records)
    assert stored_results(cluster, host, 1) == [
        result_row("typed", TYPED_ROW_AS_LOGGED, numerics=int(numerics))
    ]


# --- 5. decorations nested and at top level -------------------------------------------

DECORATIONS = {"hostname": "web-01", "username": "alice"}


def decorated(record: dict[str, Any], top_level: bool) -> dict[str, Any]:
    return log_records.decorations_at_top_level(record) if top_level else record


@pytest.mark.parametrize("top_level", [False, True], ids=["nested", "top-level"])
def test_decorations_are_stored_wherever_osquery_puts_them(
    cluster: QuarryCluster, top_level: bool
) -> None:
    def records(host: str) -> list[LogRecord]:
        event = log_records.event_record(
            "decorated", host, NOW, PROCESS_ROW, counter=3, decorations=DECORATIONS
        )
        assert ("decorations" in decorated(event, top_level)) is not top_level
        return [decorated(event, top_level)]

    def statuses(host: str) -> list[LogRecord]:
        status = log_records.status_record(host, NOW, "decorated", decorations=DECORATIONS)
        return [decorated(status, top_level)]

    host = post_from_new_host(cluster, "result", records)
    assert stored_results(cluster, host, 1) == [
        result_row("decorated", PROCESS_ROW, decorations=DECORATIONS, counter=3)
    ]
    host = post_from_new_host(cluster, "status", statuses)
    assert [row["decorations"] for row in stored_status_logs(cluster, host, 1)] == [DECORATIONS]


# --- 6. status lines before osquery 5.10 ----------------------------------------------


def test_pre_5_10_status_lines_with_every_value_a_string_are_stored_as_numbers(
    cluster: QuarryCluster,
) -> None:
    """boost's write_json: numbers as strings, and `/` escaped as `\\/` (spec §8.5)."""

    def records(host: str) -> list[LogRecord]:
        status = log_records.status_record(
            host,
            NOW,
            "Storing initial results for /etc/hosts",
            severity=log_records.SEVERITY_WARNING,
            filename="query.cpp",
            line=119,
            version="4.9.0",
            decorations={"username": "alice"},
            all_strings=True,
        )
        assert (status["severity"], status["line"]) == ("1", "119")
        return [orjson.dumps(status).replace(b"/", b"\\/")]

    host = post_from_new_host(cluster, "status", records)
    assert stored_status_logs(cluster, host, 1) == [
        {
            "unix_time": NOW,
            "calendar_time": log_records.calendar_time(NOW),
            "severity": 1,
            "filename": "query.cpp",
            "line": 119,
            "message": "Storing initial results for /etc/hosts",
            "version": "4.9.0",
            "decorations": {"username": "alice"},
        }
    ]


# --- 7. items in `data` that are not objects ------------------------------------------

NOT_OBJECTS = [b"42", b'"a string"', b"null", b"[1,2]", b"true"]


def test_items_that_are_not_objects_are_skipped_counted_and_the_post_succeeds(
    cluster: QuarryCluster,
) -> None:
    """Refusing the batch would make osquery resend it for ever; the good records are kept."""

    def records(host: str) -> list[LogRecord]:
        first = log_records.event_record("mixed", host, NOW, {"i": "1"})
        last = log_records.event_record("mixed", host, NOW, {"i": "2"})
        return [first, *NOT_OBJECTS, last]

    skipped_before = ingest_skipped_records(cluster)
    host = post_from_new_host(cluster, "result", records)  # asserts osquery's success
    assert stored_results(cluster, host, 2) == [
        result_row("mixed", {"i": "1"}),
        result_row("mixed", {"i": "2"}),
    ]
    assert ingest_skipped_records(cluster) - skipped_before == len(NOT_OBJECTS)
