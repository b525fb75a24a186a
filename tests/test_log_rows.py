"""Flattening osquery log records into table rows, with the examples of osquery-protocol.md §8."""

from __future__ import annotations

import orjson
import pytest

from ingest_service.log_rows import (
    DISTRIBUTED_STATUS_TABLE,
    DISTRIBUTED_TABLE,
    RAW_COLUMNS,
    RESULTS_TABLE,
    STATUS_TABLE,
    MalformedBatch,
    as_text,
    flatten_batch,
    raw_batch_row,
    split_query_name,
)
from protos.v1 import logs_pb2

# §8.2, verbatim except that the hashes are shortened.
EVENT_ADDED = (
    '{"name":"pack_osquery-monitoring_osquery_info","hostIdentifier":"web-01",'
    '"calendarTime":"Sun Jan  5 10:20:30 2025 UTC","unixTime":1736072430,"epoch":0,"counter":0,'
    '"numerics":false,"decorations":{"host_uuid":"4c4c4544-0042-3510-8052-b4c04f4d4e32",'
    '"username":"alice"},"columns":{"build_distro":"centos7","build_platform":"linux",'
    '"config_hash":"8fa3","config_valid":"1","extensions":"inactive","instance_id":"b6f5",'
    '"pid":"3521","platform_mask":"9","start_time":"1736072400","uuid":"4C4C4544",'
    '"version":"5.23.1","watcher":"3519"},"action":"added"}'
)
EVENT_REMOVED = (
    '{"name":"processes","hostIdentifier":"web-01","calendarTime":"Sun Jan  5 10:25:30 2025 UTC",'
    '"unixTime":1736072730,"epoch":0,"counter":3,"numerics":false,"columns":{"name":"osqueryd",'
    '"path":"/opt/osquery/bin/osqueryd","pid":"97650"},"action":"removed"}'
)
# §8.3
SNAPSHOT = (
    '{"snapshot":[{"parent":"0","path":"/sbin/launchd","pid":"1"},{"parent":"1",'
    '"path":"/usr/sbin/syslogd","pid":"51"}],"action":"snapshot","name":"process_snapshot",'
    '"hostIdentifier":"web-01","calendarTime":"Sun Jan  5 10:20:30 2025 UTC",'
    '"unixTime":1736072430,"epoch":0,"counter":0,"numerics":false}'
)
# §8.4
BATCH_FORMAT = (
    '{"diffResults":{"removed":[{"name":"osqueryd","path":"/opt/osquery/bin/osqueryd",'
    '"pid":"97650"}],"added":[{"name":"osqueryd","path":"/opt/osquery/bin/osqueryd",'
    '"pid":"97830"}]},"name":"processes","hostIdentifier":"web-01",'
    '"calendarTime":"Sun Jan  5 10:25:30 2025 UTC","unixTime":1736072730,"epoch":0,"counter":3,'
    '"numerics":false}'
)
# §8.5, and the same line as osquery before 5.10 wrote it (every value a string, `\/`).
STATUS_LINES = (
    '{"hostIdentifier":"web-01","calendarTime":"Sun Jan  5 10:20:30 2025 UTC",'
    '"unixTime":1736072430,"severity":0,"filename":"query.cpp","line":119,'
    '"message":"Storing initial results for new scheduled query: processes","version":"5.23.1",'
    '"decorations":{"username":"alice"}}',
    '{"hostIdentifier":"web-01","calendarTime":"Sun Jan  5 10:20:31 2025 UTC",'
    '"unixTime":1736072431,"severity":0,"filename":"distributed.cpp","line":352,'
    '"message":"Accelerating distributed query checkins for 60 seconds","version":"5.23.1"}',
)
STATUS_PRE_510 = (
    '{"hostIdentifier":"web-01","calendarTime":"Sun Jan  5 10:20:30 2025 UTC",'
    '"unixTime":"1736072430","severity":"2","filename":"query.cpp","line":"119",'
    '"message":"path \\/etc\\/hosts","version":"5.9.1","decorations":{"username":"alice"}}'
)


def batch_of(kind: int, *records: str, campaign_id: str = "") -> logs_pb2.LogBatch:
    return logs_pb2.LogBatch(
        batch_id="b-1",
        kind=kind,
        node_id="node-1",
        host_identifier="web-01",
        received_at=1736072440,
        data_json=f"[{','.join(records)}]".encode(),
        campaign_id=campaign_id,
    )


def columns_of(row: dict) -> dict[str, str]:
    return dict(zip(row["column_names"], row["column_values"], strict=True))


def decorations_of(row: dict) -> dict[str, str]:
    return dict(zip(row["decoration_names"], row["decoration_values"], strict=True))


def test_event_format_is_one_row_per_record() -> None:
    flat = flatten_batch(batch_of(logs_pb2.RESULT, EVENT_ADDED, EVENT_REMOVED))

    assert flat.table == RESULTS_TABLE
    assert flat.skipped_records == 0
    added, removed = flat.dicts()
    assert added == {
        "node_id": "node-1",
        "received_at": 1736072440,
        "batch_id": "b-1",
        "name": "pack_osquery-monitoring_osquery_info",
        "pack": "osquery-monitoring",
        "query": "osquery_info",
        "host_identifier": "web-01",
        "calendar_time": "Sun Jan  5 10:20:30 2025 UTC",
        "unix_time": 1736072430,
        "epoch": 0,
        "counter": 0,
        "numerics": 0,
        "decoration_names": ["host_uuid", "username"],
        "decoration_values": ["4c4c4544-0042-3510-8052-b4c04f4d4e32", "alice"],
        "action": "added",
        "column_names": [
            "build_distro", "build_platform", "config_hash", "config_valid", "extensions",
            "instance_id", "pid", "platform_mask", "start_time", "uuid", "version", "watcher",
        ],
        "column_values": [
            "centos7", "linux", "8fa3", "1", "inactive", "b6f5", "3521", "9", "1736072400",
            "4C4C4544", "5.23.1", "3519",
        ],
    }  # fmt: skip
    assert (removed["action"], removed["counter"], removed["unix_time"]) == (
        "removed",
        3,
        1736072730,
    )
    assert columns_of(removed) == {
        "name": "osqueryd",
        "path": "/opt/osquery/bin/osqueryd",
        "pid": "97650",
    }
    assert decorations_of(removed) == {}


def test_batch_format_is_one_row_per_removed_and_added_element() -> None:
    flat = flatten_batch(batch_of(logs_pb2.RESULT, BATCH_FORMAT))

    assert [(row["action"], columns_of(row)["pid"]) for row in flat.dicts()] == [
        ("removed", "97650"),
        ("added", "97830"),
    ]
    assert {row["name"] for row in flat.dicts()} == {"processes"}
    assert {row["counter"] for row in flat.dicts()} == {3}


def test_batch_format_first_run_with_empty_arrays_has_no_rows() -> None:
    empty = orjson.loads(BATCH_FORMAT)
    empty["diffResults"] = {"removed": [], "added": []}
    flat = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(empty).decode()))

    assert (flat.dicts(), flat.skipped_records) == ([], 0)


def test_snapshot_format_is_one_row_per_snapshot_element() -> None:
    flat = flatten_batch(batch_of(logs_pb2.RESULT, SNAPSHOT))

    assert [(row["action"], columns_of(row)) for row in flat.dicts()] == [
        ("snapshot", {"parent": "0", "path": "/sbin/launchd", "pid": "1"}),
        ("snapshot", {"parent": "1", "path": "/usr/sbin/syslogd", "pid": "51"}),
    ]
    assert {row["name"] for row in flat.dicts()} == {"process_snapshot"}


def test_empty_snapshot_yields_no_rows() -> None:
    empty = orjson.loads(SNAPSHOT)
    empty["snapshot"] = []
    flat = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(empty).decode()))

    assert (flat.dicts(), flat.skipped_records) == ([], 0)


def test_snapshot_event_type_is_an_event_with_action_snapshot() -> None:
    record = orjson.loads(EVENT_REMOVED)
    record["action"] = "snapshot"
    flat = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(record).decode()))

    [row] = flat.dicts()
    assert row["action"] == "snapshot"
    assert columns_of(row)["pid"] == "97650"


def test_numerics_become_the_strings_osquery_logs_without_them() -> None:
    record = orjson.loads(EVENT_REMOVED)
    record["numerics"] = True
    record["columns"] = {"pid": 97650, "load": 1.5, "zero": 0.0, "ratio": 0.1, "gone": None}
    flat = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(record).decode()))

    [row] = flat.dicts()
    assert row["numerics"] == 1
    assert columns_of(row) == {
        "pid": "97650",
        "load": "1.5",
        "zero": "0.0",
        "ratio": "0.1",
        "gone": "",
    }


def test_top_level_decorations_are_decorations() -> None:
    record = orjson.loads(EVENT_REMOVED)
    record["host_uuid"] = "4c4c"
    record["username"] = "alice"
    record["decorations"] = {"region": "eu"}
    flat = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(record).decode()))

    [row] = flat.dicts()
    assert decorations_of(row) == {"region": "eu", "host_uuid": "4c4c", "username": "alice"}
    assert "host_uuid" not in columns_of(row)


def test_status_lines_with_numbers() -> None:
    flat = flatten_batch(batch_of(logs_pb2.STATUS, *STATUS_LINES))

    assert flat.table == STATUS_TABLE
    first, second = flat.dicts()
    assert first == {
        "node_id": "node-1",
        "received_at": 1736072440,
        "batch_id": "b-1",
        "host_identifier": "web-01",
        "calendar_time": "Sun Jan  5 10:20:30 2025 UTC",
        "unix_time": 1736072430,
        "severity": 0,
        "filename": "query.cpp",
        "line": 119,
        "message": "Storing initial results for new scheduled query: processes",
        "version": "5.23.1",
        "decoration_names": ["username"],
        "decoration_values": ["alice"],
    }
    assert (second["filename"], second["line"], decorations_of(second)) == (
        "distributed.cpp",
        352,
        {},
    )


def test_status_lines_before_510_have_string_numbers() -> None:
    [row] = flatten_batch(batch_of(logs_pb2.STATUS, STATUS_PRE_510)).dicts()

    assert (row["unix_time"], row["severity"], row["line"]) == (1736072430, 2, 119)
    assert row["message"] == "path /etc/hosts"
    assert decorations_of(row) == {"username": "alice"}


def test_status_top_level_decorations() -> None:
    record = orjson.loads(STATUS_LINES[1])
    record["username"] = "bob"
    [row] = flatten_batch(batch_of(logs_pb2.STATUS, orjson.dumps(record).decode())).dicts()

    assert decorations_of(row) == {"username": "bob"}


def test_distributed_rows_are_indexed_and_carry_the_campaign() -> None:
    rows = '{"version":"5.23.1","build_platform":"linux"},{"version":"5.9.1","build_platform":""}'
    flat = flatten_batch(batch_of(logs_pb2.DISTRIBUTED, rows, campaign_id="c-7"))

    assert flat.table == DISTRIBUTED_TABLE
    assert [
        (row["campaign_id"], row["row_index"], columns_of(row), row["host_identifier"])
        for row in flat.dicts()
    ] == [
        ("c-7", 0, {"version": "5.23.1", "build_platform": "linux"}, "web-01"),
        ("c-7", 1, {"version": "5.9.1", "build_platform": ""}, "web-01"),
    ]


def test_distributed_statuses_are_one_row_per_query_with_osquery_s_stats() -> None:
    statuses = (
        '{"campaign_id":"c-7","status":0,"message":"","row_count":2,'
        '"wall_time_ms":12,"user_time":3,"system_time":1,"memory":4096}',
        '{"campaign_id":"c-8","status":1,"message":"no such table: x","row_count":0}',
        '"not an object"',
    )
    flat = flatten_batch(batch_of(logs_pb2.DISTRIBUTED_STATUS, *statuses))

    assert flat.table == DISTRIBUTED_STATUS_TABLE
    assert flat.skipped_records == 1
    assert flat.dicts() == [
        {
            "node_id": "node-1",
            "received_at": 1736072440,
            "batch_id": "b-1",
            "campaign_id": "c-7",
            "host_identifier": "web-01",
            "status": 0,
            "message": "",
            "row_count": 2,
            "wall_time_ms": 12,
            "user_time": 3,
            "system_time": 1,
            "memory": 4096,
        },
        {
            "node_id": "node-1",
            "received_at": 1736072440,
            "batch_id": "b-1",
            "campaign_id": "c-8",
            "host_identifier": "web-01",
            "status": 1,
            "message": "no such table: x",
            "row_count": 0,
            "wall_time_ms": 0,
            "user_time": 0,
            "system_time": 0,
            "memory": 0,
        },
    ]


def test_a_raw_batch_row_keeps_the_batch_as_received() -> None:
    batch = batch_of(logs_pb2.DISTRIBUTED, '{"pid":"1"}', campaign_id="c-7")

    assert dict(zip(RAW_COLUMNS, raw_batch_row(batch), strict=True)) == {
        "node_id": "node-1",
        "received_at": 1736072440,
        "batch_id": "b-1",
        "kind": "distributed",
        "host_identifier": "web-01",
        "campaign_id": "c-7",
        "data_json": '[{"pid":"1"}]',
    }


def test_an_empty_distributed_answer_has_no_rows() -> None:
    assert flatten_batch(batch_of(logs_pb2.DISTRIBUTED, campaign_id="c-7")).dicts() == []


@pytest.mark.parametrize(
    ("data_json", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"data": []}', "must be a JSON array"),
        (b"", "not valid JSON"),
    ],
)
def test_unreadable_batches_are_rejected_with_a_reason(data_json: bytes, message: str) -> None:
    batch = batch_of(logs_pb2.RESULT)
    batch.data_json = data_json
    with pytest.raises(MalformedBatch, match=message):
        flatten_batch(batch)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(MalformedBatch, match="unknown log kind"):
        flatten_batch(batch_of(logs_pb2.LOG_KIND_UNSPECIFIED))


def test_malformed_records_are_skipped_and_counted() -> None:
    flat = flatten_batch(
        batch_of(logs_pb2.RESULT, "42", '"text"', '{"name":"no_rows"}', EVENT_REMOVED)
    )

    assert flat.skipped_records == 3
    assert [row["name"] for row in flat.dicts()] == ["processes"]


def test_wrongly_typed_fields_are_stored_as_best_possible() -> None:
    record = orjson.loads(EVENT_REMOVED)
    record.update(unixTime="yesterday", counter=-4, epoch=None, name=7)
    record["columns"] = {"nested": {"a": [1, 2]}, "flag": True}
    [row] = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(record).decode())).dicts()

    assert (row["unix_time"], row["counter"], row["epoch"], row["name"]) == (0, 0, 0, "7")
    assert columns_of(row) == {"nested": '{"a":[1,2]}', "flag": "1"}


def test_distributed_non_object_rows_are_skipped() -> None:
    flat = flatten_batch(batch_of(logs_pb2.DISTRIBUTED, "[1]", '{"a":"1"}', campaign_id="c"))

    assert flat.skipped_records == 1
    assert [(row["row_index"], columns_of(row)) for row in flat.dicts()] == [(1, {"a": "1"})]


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, ""), ("x", "x"), (3, "3"), (1.5, "1.5"), (2.0, "2.0"), (1e20, "1e+20"), (False, "0")],
)
def test_values_as_osquery_text(value: object, text: str) -> None:
    assert as_text(value) == text


# Pack and query names


@pytest.mark.parametrize(
    ("name", "pack", "query"),
    [
        ("pack_osquery-monitoring_osquery_info", "osquery-monitoring", "osquery_info"),
        ("pack_incident-response_listening_ports", "incident-response", "listening_ports"),
        ("pack_my_pack_q", "my", "pack_q"),  # documented: split at the first `_`
        ("processes", "", "processes"),
        ("pack_x", "", "pack_x"),
        ("", "", ""),
    ],
)
def test_pack_and_query_are_split_from_the_name(name: str, pack: str, query: str) -> None:
    assert split_query_name(name) == (pack, query)


def test_rows_carry_pack_and_query() -> None:
    flat = flatten_batch(batch_of(logs_pb2.RESULT, EVENT_ADDED, EVENT_REMOVED, SNAPSHOT))

    assert [(row["pack"], row["query"]) for row in flat.dicts()] == [
        ("osquery-monitoring", "osquery_info"),
        ("", "processes"),
        ("", "process_snapshot"),
        ("", "process_snapshot"),
    ]


# Input as osquery really sends it


def test_bytes_that_are_not_utf8_are_kept_as_replacement_characters() -> None:
    line = EVENT_REMOVED.encode().replace(b'"osqueryd"', b'"osq\xffd\xc3"')
    batch = batch_of(logs_pb2.RESULT)
    batch.data_json = b"[" + line + b"," + EVENT_REMOVED.encode() + b"]"

    flat = flatten_batch(batch)

    assert flat.skipped_records == 0
    assert [columns_of(row)["name"] for row in flat.dicts()] == ["osq\ufffdd\ufffd", "osqueryd"]
    assert columns_of(flat.dicts()[0])["path"] == "/opt/osquery/bin/osqueryd"


def test_a_line_of_one_mebibyte_is_stored_whole() -> None:
    record = orjson.loads(EVENT_REMOVED)
    record["columns"]["cmdline"] = "A" * (1024 * 1024)
    [row] = flatten_batch(batch_of(logs_pb2.RESULT, orjson.dumps(record).decode())).dicts()

    assert len(columns_of(row)["cmdline"]) == 1024 * 1024


def test_numerics_off_and_on_give_the_same_values() -> None:
    off = orjson.loads(EVENT_REMOVED)
    on = {**off, "numerics": True, "columns": {**off["columns"], "pid": 97650}}
    rows = flatten_batch(batch_of(logs_pb2.RESULT, *(orjson.dumps(r).decode() for r in (off, on))))

    assert [row["numerics"] for row in rows.dicts()] == [0, 1]
    assert columns_of(rows.dicts()[0]) == columns_of(rows.dicts()[1])


def test_nested_and_top_level_decorations_are_stored_alike() -> None:
    nested = orjson.loads(EVENT_REMOVED) | {"decorations": {"hostname": "web-01"}}
    top_level = orjson.loads(EVENT_REMOVED) | {"hostname": "web-01"}
    flat = flatten_batch(
        batch_of(logs_pb2.RESULT, *(orjson.dumps(r).decode() for r in (nested, top_level)))
    )

    assert [(row["decoration_names"], row["decoration_values"]) for row in flat.dicts()] == [
        (["hostname"], ["web-01"]),
        (["hostname"], ["web-01"]),
    ]


def test_a_non_object_item_in_data_is_skipped_and_counted_for_every_kind() -> None:
    for kind in (logs_pb2.RESULT, logs_pb2.STATUS):
        good = EVENT_REMOVED if kind == logs_pb2.RESULT else STATUS_PRE_510
        flat = flatten_batch(batch_of(kind, "null", "[]", good, '"x"'))

        assert (flat.skipped_records, len(flat.dicts())) == (3, 1)


def test_records_of_one_run_share_their_fields_only_when_they_are_truly_equal() -> None:
    """Consecutive records with equal headers reuse the first one's fields (a fast path);
    values Python calls equal but that are stored differently must not be reused."""
    first = orjson.loads(EVENT_ADDED)
    numerics_one = {**first, "numerics": 1}  # 1 == True in Python, but only true is the flag
    flagged = {**first, "numerics": True}
    decorated = {**first, "decorations": {"host_uuid": 1.0}}  # 1.0 == 1, "1.0" != "1"
    integer_decoration = {**first, "decorations": {"host_uuid": 1}}
    top_level = {**first, "owner": "alice"}
    records = [first, first, flagged, numerics_one, decorated, integer_decoration, top_level]

    flat = flatten_batch(batch_of(logs_pb2.RESULT, *(orjson.dumps(r).decode() for r in records)))

    rows = flat.dicts()
    assert [row["numerics"] for row in rows] == [0, 0, 1, 0, 0, 0, 0]
    assert [decorations_of(row) for row in rows[4:6]] == [{"host_uuid": "1.0"}, {"host_uuid": "1"}]
    assert decorations_of(rows[6])["owner"] == "alice"
    assert rows[0] == rows[1]
