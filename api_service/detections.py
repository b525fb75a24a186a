"""Detections and alerts: the live rules (DetectionService.ListDetections), a rule tried
over past logs (TestDetection), and the alerts they raised, read from ClickHouse.

Alerts live in `quarry.alerts`, one row per event of an alert (firing, hits, resolved;
docs/analysts.md), read through the log store's Query like a live query's rows
(docs/adr/0014-rest-api-over-grpc.md): every value the caller gave is quoted by
sql_string and the page is counted in the query, so an alert's state (its latest event)
is ClickHouse's to compute, not Python's over the whole table.
"""

from __future__ import annotations

import json
import re
from typing import Any

from api_service.backends import call, sql_rows
from api_service.errors import bad_request, not_found
from api_service.json_messages import iso_time, message_json
from api_service.routing import Call, Endpoint, Param, page
from api_service.schemas import TIME, Schema, message_schema, page_of
from protos.v1 import detection_pb2
from quarry.runtime.clickhouse_sql import sql_string

SEVERITIES = ("info", "low", "medium", "high", "critical")
ALERT_STATES = ("open", "resolved")
DEFAULT_SINCE = "24h"
DURATION = re.compile(r"^\s*(\d{1,7})\s*([smhd])\s*$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# An alert's page shows at most this many events (an open alert gains one per run with hits).
EVENTS_SHOWN = 1000

DETECTION = message_schema(
    detection_pb2.DetectionStatus.DESCRIPTOR,
    "Detection",
    drop=("watermark",),
    extra={"watermark": TIME},
)
DETECTIONS_PAGE: Schema = {
    **page_of(DETECTION),
    "properties": {
        **page_of(DETECTION)["properties"],
        "leader": {
            "type": "boolean",
            "description": "whether the replica that answered runs the rules",
        },
    },
    "required": [*page_of(DETECTION)["required"], "leader"],
}
ROW_OBJECT: Schema = {"type": "object", "description": "one answer row of the rule"}
TEST_BODY: Schema = {
    "type": "object",
    "properties": {
        "since": {
            "type": "string",
            "description": "look at the rows stored in this last while: 30m, 24h, 7d",
            "default": DEFAULT_SINCE,
        },
        "rule": {
            "type": "object",
            "description": "a rule as in the state files' detections, tried instead of the"
            " live one of that name (not applied)",
        },
    },
    "additionalProperties": False,
}
WOULD_RAISE: Schema = {
    "type": "object",
    "properties": {
        "dedup_key": {"type": "array", "items": {}},
        "host_identifier": {"type": "string"},
        "hits": {"type": "integer"},
        "rows": {"type": "array", "items": ROW_OBJECT},
    },
    "required": ["dedup_key", "host_identifier", "hits", "rows"],
    "additionalProperties": False,
}
TEST_RESULT: Schema = {
    "type": "object",
    "properties": {
        "rule": {"type": "string"},
        "sql": {"type": "string"},
        "rows": {"type": "integer"},
        "alerts": {"type": "array", "items": WOULD_RAISE},
        "window_start": TIME,
        "window_end": TIME,
    },
    "required": ["rule", "sql", "rows", "alerts", "window_start", "window_end"],
    "additionalProperties": False,
}
ALERT: Schema = {
    "type": "object",
    "properties": {
        "alert_id": {"type": "string"},
        "rule": {"type": "string"},
        "severity": {"type": "string"},
        "host_identifier": {"type": "string"},
        "dedup_key": {"type": "array", "items": {}},
        "state": {"type": "string", "enum": list(ALERT_STATES)},
        "first_seen": TIME,
        "last_event_at": TIME,
        "hits": {"type": "integer"},
    },
    "required": [
        "alert_id",
        "rule",
        "severity",
        "host_identifier",
        "dedup_key",
        "state",
        "first_seen",
        "last_event_at",
        "hits",
    ],
    "additionalProperties": False,
}
ALERT_EVENT: Schema = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["firing", "hits", "resolved"]},
        "at": TIME,
        "hits": {"type": "integer"},
        "rows": {"type": "array", "items": ROW_OBJECT},
    },
    "required": ["event", "at", "hits", "rows"],
    "additionalProperties": False,
}
ALERT_DETAIL: Schema = {
    "type": "object",
    "properties": {"alert": ALERT, "events": {"type": "array", "items": ALERT_EVENT}},
    "required": ["alert", "events"],
    "additionalProperties": False,
}
RULE_PARAM = Param("rule", "a detection rule's name", where="path")
ALERT_PARAM = Param("alert", "an alert's id", where="path")


# --- rules ----------------------------------------------------------------------------


def detection_json(status: detection_pb2.DetectionStatus) -> dict[str, Any]:
    answer = message_json(status)
    answer["watermark"] = iso_time(status.watermark)
    return answer


async def list_detections(call_: Call) -> dict:
    reply = await call(
        call_.backends.detection.ListDetections,
        detection_pb2.ListDetectionsRequest(),
        call_.token,
    )
    return {**page([detection_json(d) for d in reply.detections], call_), "leader": reply.leader}


def since_seconds(text: str) -> int:
    """Seconds in "30s", "15m", "24h" or "7d" (as `quarry detection test --since`)."""
    match = DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise bad_request(
            f"since must be a duration such as 30m, 24h or 7d, not {text!r}", "bad_duration"
        )
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def _dedup_key(text: str) -> list[Any]:
    """The dedup columns' values: stored as a JSON array; anything else kept as one value."""
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    return value if isinstance(value, list) else [value]


async def test_detection(call_: Call) -> dict:
    name = call_.params["rule"]
    rule = call_.body.get("rule")
    request = detection_pb2.TestDetectionRequest(
        name=name,
        rule_json=json.dumps(rule) if rule is not None else "",
        since_s=since_seconds(call_.body.get("since", DEFAULT_SINCE)),
    )
    answer = await call(call_.backends.detection.TestDetection, request, call_.token)
    if answer.error:
        # The rule ran and ClickHouse refused its SQL: the caller's rule is at fault.
        raise bad_request(f"the rule's SQL failed: {answer.error}", "rule_failed")
    return {
        "rule": name,
        "sql": answer.sql,
        "rows": answer.rows,
        "alerts": [
            {
                "dedup_key": _dedup_key(a.dedup_key),
                "host_identifier": a.host_identifier,
                "hits": a.hits,
                "rows": [json.loads(row) for row in a.rows_json],
            }
            for a in answer.alerts
        ],
        "window_start": iso_time(answer.window_start),
        "window_end": iso_time(answer.window_end),
    }


# --- alerts ---------------------------------------------------------------------------

# One row per alert from its events; the latest event says whether it is open.
_ALERT_COLUMNS = (
    "alert_id, any(rule), any(severity), any(host_identifier), any(dedup_key),"
    " toUnixTimestamp(min(first_seen)), max(hits),"
    " argMax(event, received_at), toUnixTimestamp(max(received_at))"
)
_LAST_EVENT = "argMax(event, received_at)"


def alerts_where(rule: str, severity: str, host: str, alert_id: str = "") -> str:
    """The WHERE clause of the alert filters; every value quoted by sql_string."""
    where = ["1"]
    for column, value in (
        ("rule", rule),
        ("severity", severity),
        ("host_identifier", host),
        ("alert_id", alert_id),
    ):
        if value:
            where.append(f"{column} = {sql_string(value)}")
    return " AND ".join(where)


def alerts_having(state: str) -> str:
    if state == "open":
        return f" HAVING {_LAST_EVENT} != 'resolved'"
    if state == "resolved":
        return f" HAVING {_LAST_EVENT} = 'resolved'"
    return ""


def alerts_sql(where: str, having: str, limit: int, offset: int) -> str:
    """A page of alerts, open ones first, then the newest first."""
    return (
        f"SELECT {_ALERT_COLUMNS} FROM quarry.alerts WHERE {where} GROUP BY alert_id{having}"
        f" ORDER BY {_LAST_EVENT} = 'resolved', min(first_seen) DESC, alert_id"
        f" LIMIT {int(offset)}, {int(limit)}"
    )


def alerts_count_sql(where: str, having: str) -> str:
    return (
        "SELECT count() FROM (SELECT alert_id FROM quarry.alerts"
        f" WHERE {where} GROUP BY alert_id{having})"
    )


def alert_json(row: list[Any]) -> dict[str, Any]:
    alert_id, rule, severity, host, dedup, first, hits, last_event, last_at = row
    return {
        "alert_id": alert_id,
        "rule": rule,
        "severity": severity,
        "host_identifier": host,
        "dedup_key": _dedup_key(dedup),
        "state": "resolved" if last_event == "resolved" else "open",
        "first_seen": iso_time(int(first)),
        "last_event_at": iso_time(int(last_at)),
        "hits": int(hits),
    }


async def list_alerts(call_: Call) -> dict:
    params = call_.params
    where = alerts_where(params["rule"] or "", params["severity"] or "", params["host"] or "")
    having = alerts_having(params["state"] or "")
    limit, offset = params["limit"], params["offset"]
    found = await sql_rows(call_.backends, alerts_sql(where, having, limit, offset), call_.token)
    ((total,),) = await sql_rows(call_.backends, alerts_count_sql(where, having), call_.token)
    total = int(total)
    return {
        "items": [alert_json(row) for row in found],
        "total": total,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if offset + limit < total else None,
    }


def alert_events_sql(alert_id: str) -> str:
    return (
        "SELECT event, toUnixTimestamp(received_at), hits, rows_json FROM quarry.alerts"
        f" WHERE alert_id = {sql_string(alert_id)}"
        f" ORDER BY received_at, hits LIMIT {EVENTS_SHOWN}"
    )


async def show_alert(call_: Call) -> dict:
    alert_id = call_.params["alert"]
    where = alerts_where("", "", "", alert_id)
    summary = await sql_rows(call_.backends, alerts_sql(where, "", 1, 0), call_.token)
    if not summary:
        raise not_found(f"no alert {alert_id}")
    events = await sql_rows(call_.backends, alert_events_sql(alert_id), call_.token)
    return {
        "alert": alert_json(summary[0]),
        "events": [
            {
                "event": event,
                "at": iso_time(int(at)),
                "hits": int(hits),
                "rows": [json.loads(row) for row in rows],
            }
            for event, at, hits, rows in events
        ],
    }


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/detections",
        list_detections,
        "the live detection rules: last run, lag, hits, open alerts",
        "read-only",
        DETECTIONS_PAGE,
        paged=True,
        tags=("detections",),
    ),
    Endpoint(
        "POST",
        "/api/v1/detections/{rule}/test",
        test_detection,
        "run a rule over past logs and answer what it would raise (nothing stored or sent)",
        "operator",
        TEST_RESULT,
        (RULE_PARAM,),
        body=TEST_BODY,
        tags=("detections",),
    ),
    Endpoint(
        "GET",
        "/api/v1/alerts",
        list_alerts,
        "alerts the rules raised, open ones first, then the newest",
        "read-only",
        page_of(ALERT),
        (
            Param("rule", "only this rule's alerts"),
            Param("severity", "only alerts of this severity", enum=SEVERITIES),
            Param("state", "open or resolved", enum=ALERT_STATES),
            Param("host", "only this host identifier's alerts"),
        ),
        paged=True,
        tags=("detections",),
    ),
    Endpoint(
        "GET",
        "/api/v1/alerts/{alert}",
        show_alert,
        "one alert, its events and the rows that matched",
        "read-only",
        ALERT_DETAIL,
        (ALERT_PARAM,),
        tags=("detections",),
    ),
]
