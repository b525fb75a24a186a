"""Unit tests of the REST API's translation modules: gRPC codes to HTTP, messages to JSON,
request bodies against their schemas (api_service/errors.py, json_messages.py, routing.py)."""

from __future__ import annotations

import grpc
import pytest

from api_service.detections import (
    alerts_count_sql,
    alerts_having,
    alerts_sql,
    alerts_where,
    since_seconds,
)
from api_service.errors import ApiError, from_rpc_error
from api_service.json_messages import iso_time, message_json, parse_time
from api_service.queries import decode_cursor, encode_cursor, rows_sql
from api_service.routing import check_body
from protos.v1 import distributed_pb2, enroll_pb2


class FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.INTERNAL, 502),
    ],
)
def test_grpc_codes_become_http_statuses_of_the_same_meaning(
    code: grpc.StatusCode, status: int
) -> None:
    error = from_rpc_error(FailedCall(code, "what\n  happened"))
    assert (error.status, error.code) == (status, code.name.lower())
    assert "\n" not in error.message and "what happened" in error.message


def test_messages_become_json_with_numbers_iso_times_and_enum_words() -> None:
    report = distributed_pb2.CampaignReport(
        found=True,
        counts={"answered": 2},
        hosts=[distributed_pb2.HostState(state=3, row_count=1 << 40, delivered_at=1700000000)],
    )
    shown = message_json(report)
    host = shown["hosts"][0]
    assert host["state"] == "answered" and host["row_count"] == 1 << 40
    assert host["delivered_at"] == "2023-11-14T22:13:20Z" and host["answered_at"] is None
    assert shown["counts"] == {"answered": 2}
    entry = message_json(enroll_pb2.AuditEntry(at_ms=1700000000123))
    assert entry["at"] == "2023-11-14T22:13:20.123Z"
    details = message_json(enroll_pb2.NodeDetails(host_details_json='{"a": "b"}'))
    assert details["host_details"] == {"a": "b"}
    assert parse_time(iso_time(1700000000) or "") == 1700000000


SCHEMA = {
    "type": "object",
    "properties": {
        "sql": {"type": "string"},
        "ttl": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sql"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "must be object"),
        ({}, "needs the field 'sql'"),
        ({"sql": 1}, "field 'sql' must be string"),
        ({"sql": "x", "ttl": True}, "field 'ttl' must be integer"),
        ({"sql": "x", "ttl": -1}, "at least 0"),
        ({"sql": "x", "tags": ["a", 2]}, "each item"),
        ({"sql": "x", "other": 1}, "unknown field 'other'"),
    ],
)
def test_bodies_are_checked_against_their_schema(body: object, says: str) -> None:
    with pytest.raises(ApiError) as refused:
        check_body(body, SCHEMA)
    assert refused.value.status == 400 and says in refused.value.message


def test_a_good_body_passes() -> None:
    check_body({"sql": "x", "ttl": 3, "tags": ["a"]}, SCHEMA)


def test_cursors_round_trip_and_the_rows_query_quotes_every_value() -> None:
    host = "h' OR 1=1 --"
    assert decode_cursor(encode_cursor(host, 7)) == (host, 7)
    sql = rows_sql("q' --", host, (host, 7), 10)
    assert "'q\\' --'" in sql and "'h\\' OR 1=1 --'" in sql
    assert sql.endswith("LIMIT 10")
    for bad in ("%%", encode_cursor("h", 1)[:-2] + "!!", "W10"):
        with pytest.raises(ApiError):
            decode_cursor(bad)


def test_the_alerts_query_quotes_every_filter_and_pages_in_clickhouse() -> None:
    where = alerts_where("r' --", "high", "h' OR 1=1 --")
    sql = alerts_sql(where, alerts_having("open"), 10, 20)
    assert "rule = 'r\\' --'" in sql and "host_identifier = 'h\\' OR 1=1 --'" in sql
    assert "HAVING argMax(event, received_at) != 'resolved'" in sql
    assert sql.endswith("LIMIT 20, 10")
    assert alerts_where("", "", "") == "1" and alerts_having("") == ""
    assert "'resolved'" in alerts_count_sql(where, alerts_having("resolved"))


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("24h", 86400), (" 7d ", 604800)]
)
def test_a_test_window_is_a_duration(text: str, seconds: int) -> None:
    assert since_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "24", "1w", "yesterday", "-1h"])
def test_a_bad_test_window_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ApiError) as refused:
        since_seconds(text)
    assert refused.value.status == 400 and "30m, 24h or 7d" in refused.value.message
