"""Live queries: start, follow, cancel, the per-host account, the rows, and the event stream.

A campaign lives in the distributed service; its rows in ClickHouse
(quarry.distributed_results), read through the log store's gRPC service as
`quarry query show --rows` reads them, a page at a time in the table's own order
(host_identifier, row_index), so no campaign is too large to read whole. The event
stream follows DistributedService.WatchCampaign and adds each host's rows as soon as the
host is reported answered: rows are stored before the answer is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from api_service.backends import call, sql_rows, stream
from api_service.errors import bad_request, not_found
from api_service.json_messages import message_json
from api_service.metrics import OpenStream
from api_service.routing import LIMIT, Call, Endpoint, Param, page
from api_service.schemas import Schema, message_schema, page_of
from protos.v1 import distributed_pb2
from quarry.runtime.clickhouse_sql import sql_string

HostState = distributed_pb2.HostState
STATES = tuple(
    v.name.lower() for v in HostState.State.DESCRIPTOR.values if v.name != "STATE_UNSPECIFIED"
)
# Without news from the service, a comment line this often keeps proxies from closing it.
KEEPALIVE_S = 15.0

CAMPAIGN = message_schema(distributed_pb2.Campaign.DESCRIPTOR)
HOST_STATE = message_schema(distributed_pb2.HostState.DESCRIPTOR)
COUNTS: Schema = {"type": "object", "additionalProperties": {"type": "integer"}}
QUERY_STATUS: Schema = {
    "type": "object",
    "properties": {
        "campaign": CAMPAIGN,
        "counts": COUNTS,
        "closed": {"type": "boolean"},
        "done": {"type": "boolean"},
    },
    "required": ["campaign", "counts", "closed", "done"],
    "additionalProperties": False,
}
ROW: Schema = {
    "type": "object",
    "properties": {
        "host_identifier": {"type": "string"},
        "row_index": {"type": "integer"},
        "columns": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["host_identifier", "row_index", "columns"],
    "additionalProperties": False,
}
ROWS_PAGE: Schema = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": ROW},
        "limit": {"type": "integer"},
        "next_cursor": {"type": ["string", "null"]},
    },
    "required": ["items", "limit", "next_cursor"],
    "additionalProperties": False,
}
STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
START_BODY: Schema = {
    "type": "object",
    "properties": {
        "sql": {"type": "string"},
        "targets": {
            "type": "object",
            "properties": {
                "all": {"type": "boolean"},
                "hosts": STRINGS,
                "tags": STRINGS,
                "platforms": STRINGS,
                "labels": STRINGS,
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "min_osquery_version": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "discovery_sql": {"type": "string"},
        "ttl_seconds": {"type": "integer", "minimum": 0},
        "offline_after_seconds": {"type": "integer", "minimum": 0},
        "author": {"type": "string"},
    },
    "required": ["sql"],
    "additionalProperties": False,
}
DRY_RUN_BODY: Schema = {**START_BODY, "required": []}
REACH: Schema = {
    "type": "object",
    "properties": {
        "targeted": {"type": "integer"},
        "open_targeting": {
            "type": "boolean",
            "description": "matching hosts that enroll or come back later get it too",
        },
        "estimate": {"type": "boolean", "description": "a percentage: the launch may differ"},
    },
    "required": ["targeted", "open_targeting", "estimate"],
    "additionalProperties": False,
}
QUERY_ID = Param("query", "the live query's campaign id", where="path")


async def list_queries(call_: Call) -> dict:
    reply = await call(
        call_.backends.distributed.ListCampaigns,
        distributed_pb2.ListCampaignsRequest(include_closed=call_.params["include_closed"]),
        call_.token,
    )
    return page([message_json(c) for c in reply.campaigns], call_)


def start_request(body: dict[str, Any], dry_run: bool = False) -> Any:
    targets = body.get("targets", {})
    return distributed_pb2.StartQueryRequest(
        sql=body.get("sql", ""),
        node_ids=targets.get("hosts", []),
        tags=targets.get("tags", []),
        platforms=[p.lower() for p in targets.get("platforms", [])],
        labels=targets.get("labels", []),
        percent=targets.get("percent", 0.0),
        min_osquery_version=targets.get("min_osquery_version", ""),
        discovery_sql=body.get("discovery_sql", ""),
        ttl_seconds=body.get("ttl_seconds", 0),
        offline_after_seconds=body.get("offline_after_seconds", 0),
        author=body.get("author", "") or "api",
        dry_run=dry_run,
    )


async def start_query(call_: Call) -> dict:
    request = start_request(call_.body)
    campaign = await call(call_.backends.distributed.StartQuery, request, call_.token)
    return message_json(campaign)


async def count_targets(call_: Call) -> dict:
    """How many hosts a launch with these targets would reach now, as the distributed
    service resolves them at launch (StartQuery's dry run: nothing is stored or sent)."""
    request = start_request(call_.body, dry_run=True)
    answer = await call(call_.backends.distributed.StartQuery, request, call_.token)
    return {
        "targeted": answer.targeted,
        "open_targeting": answer.open_targeting,
        # A percentage draws a shard per campaign id: the launch may differ by a few.
        "estimate": bool(answer.percent),
    }


async def report(call_: Call, counts_only: bool) -> distributed_pb2.CampaignReport:
    query_id = call_.params["query"]
    reply = await call(
        call_.backends.distributed.GetCampaign,
        distributed_pb2.GetCampaignRequest(campaign_id=query_id, counts_only=counts_only),
        call_.token,
    )
    if not reply.found:
        raise not_found(f"no live query {query_id}")
    return reply


async def show_query(call_: Call) -> dict:
    reply = await report(call_, counts_only=True)
    return _status(reply.campaign, reply.counts)


def _status(campaign: distributed_pb2.Campaign, counts: Any) -> dict:
    now_counts = {state: int(counts.get(state, 0)) for state in STATES}
    waiting = now_counts["targeted"] + now_counts["delivered"]
    closed = campaign.cancelled or 0 < campaign.expires_at <= time.time()
    return {
        "campaign": message_json(campaign),
        "counts": now_counts,
        "closed": closed,
        "done": closed or waiting == 0,
    }


async def query_hosts(call_: Call) -> dict:
    reply = await report(call_, counts_only=False)
    wanted = call_.params["state"]
    hosts = [
        h for h in reply.hosts if not wanted or HostState.State.Name(h.state).lower() == wanted
    ]
    return page([message_json(h) for h in hosts], call_)


async def cancel_query(call_: Call) -> dict:
    campaign = await call(
        call_.backends.distributed.CancelCampaign,
        distributed_pb2.GetCampaignRequest(campaign_id=call_.params["query"]),
        call_.token,
    )
    return message_json(campaign)


# --- rows -----------------------------------------------------------------------------


def encode_cursor(host_identifier: str, row_index: int) -> str:
    raw = json.dumps([host_identifier, row_index]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        host, index = json.loads(raw)
        if not isinstance(host, str) or not isinstance(index, int) or isinstance(index, bool):
            raise ValueError
        return host, index
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise bad_request(
            "parameter cursor is not one this API gave (use next_cursor of the previous page)",
            "bad_cursor",
        ) from None


def rows_sql(campaign_id: str, host: str, after: tuple[str, int] | None, limit: int) -> str:
    """The query for one page of a campaign's rows. Every value the caller gave is quoted
    by sql_string (quarry/runtime/clickhouse_sql.py); limit is an integer."""
    where = [f"campaign_id = {sql_string(campaign_id)}"]
    if host:
        where.append(f"host_identifier = {sql_string(host)}")
    if after is not None:
        h = sql_string(after[0])
        where.append(
            f"(host_identifier > {h} OR (host_identifier = {h} AND row_index > {int(after[1])}))"
        )
    return (
        "SELECT host_identifier, row_index, column_names, column_values"
        f" FROM quarry.distributed_results WHERE {' AND '.join(where)}"
        f" ORDER BY host_identifier, row_index LIMIT {int(limit)}"
    )


async def rows_page(
    call_: Call, campaign_id: str, host: str, after: tuple[str, int] | None, limit: int
) -> dict:
    found = await sql_rows(
        call_.backends, rows_sql(campaign_id, host, after, limit + 1), call_.token
    )
    items = [
        {"host_identifier": h, "row_index": int(i), "columns": dict(zip(n, v, strict=False))}
        for h, i, n, v in found[:limit]
    ]
    more = len(found) > limit
    last = items[-1] if items else None
    return {
        "items": items,
        "limit": limit,
        "next_cursor": encode_cursor(last["host_identifier"], last["row_index"])
        if more and last
        else None,
    }


async def query_results(call_: Call) -> dict:
    await report(call_, counts_only=True)  # 404 for a campaign that does not exist
    cursor = call_.params["cursor"]
    after = decode_cursor(cursor) if cursor else None
    return await rows_page(
        call_, call_.params["query"], call_.params["host"] or "", after, call_.params["limit"]
    )


async def all_rows(call_: Call, campaign_id: str, host: str) -> AsyncIterator[list[dict]]:
    """Every row of one host, a page at a time."""
    after = None
    while True:
        got = await rows_page(call_, campaign_id, host, after, LIMIT.maximum or 1000)
        if got["items"]:
            yield got["items"]
        if got["next_cursor"] is None:
            return
        last = got["items"][-1]
        after = (last["host_identifier"], last["row_index"])


# --- export ---------------------------------------------------------------------------

EXPORT_FORMATS = ("csv", "json")
EXPORT_CSV: Schema = {
    "type": "string",
    "description": "format=csv: a header line (host_identifier, row_index, then every column"
    " any host answered), then one line per row",
}
EXPORT_JSON: Schema = {
    "type": "array",
    "items": ROW,
    "description": "format=json: every row, as the items of /results",
}


def result_columns_sql(campaign_id: str) -> str:
    """The distinct column lists of a campaign's rows: one per shape of answer, few."""
    return (
        "SELECT DISTINCT column_names FROM quarry.distributed_results"
        f" WHERE campaign_id = {sql_string(campaign_id)}"
    )


async def result_columns(call_: Call, campaign_id: str) -> list[str]:
    """Every column any host answered, in the order they first appear."""
    found = await sql_rows(call_.backends, result_columns_sql(campaign_id), call_.token)
    return list(dict.fromkeys(name for (names,) in found for name in names))


def csv_cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (=, +, -, @ lead a formula)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_name(campaign_id: str, kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{campaign_id}.{kind}")  # nothing to break the header


async def export_results(call_: Call) -> StreamingResponse:
    """Every row, a page at a time from ClickHouse to the client: never all in memory."""
    await report(call_, counts_only=True)
    campaign_id, kind = call_.params["query"], call_.params["format"]
    if kind == "csv":
        columns = await result_columns(call_, campaign_id)
        body, media = _csv_lines(call_, campaign_id, columns), "text/csv; charset=utf-8"
    else:
        body, media = _json_array(call_, campaign_id), "application/json"
    return StreamingResponse(
        _counted(body),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="{export_name(campaign_id, kind)}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _counted(body: AsyncIterator[str]) -> AsyncIterator[str]:
    with OpenStream("export"):
        async for text in body:
            yield text


async def _csv_lines(call_: Call, campaign_id: str, columns: list[str]) -> AsyncIterator[str]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["host_identifier", "row_index", *columns])
    async for rows in all_rows(call_, campaign_id, ""):
        for row in rows:
            writer.writerow(
                [
                    csv_cell(row["host_identifier"]),
                    row["row_index"],
                    *(csv_cell(row["columns"].get(c, "")) for c in columns),
                ]
            )
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    yield out.getvalue()


async def _json_array(call_: Call, campaign_id: str) -> AsyncIterator[str]:
    yield "["
    first = True
    async for rows in all_rows(call_, campaign_id, ""):
        for row in rows:
            yield ("" if first else ",") + json.dumps(row, separators=(",", ":"))
            first = False
    yield "]"


# --- Server-Sent Events ---------------------------------------------------------------


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def query_events(call_: Call) -> StreamingResponse:
    await report(call_, counts_only=True)
    campaign_id = call_.params["query"]
    with_rows = call_.params["rows"]
    progress = await stream(
        call_.backends.distributed.WatchCampaign,
        distributed_pb2.GetCampaignRequest(campaign_id=campaign_id),
        call_.token,
    )
    return StreamingResponse(
        _events(call_, campaign_id, progress, with_rows),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _events(
    call_: Call, campaign_id: str, progress: AsyncIterator[Any], with_rows: bool
) -> AsyncIterator[str]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    async def pump() -> None:
        try:
            async for update in progress:
                await queue.put(update)
        except Exception as exc:  # the stream broke: say so to the client, then end
            await queue.put(exc)
        await queue.put(end)

    reader = asyncio.create_task(pump())
    with OpenStream("events"):
        try:
            while True:
                try:
                    update = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if update is end:
                    return
                if isinstance(update, Exception):
                    yield sse("error", {"code": "stream", "message": _one_line(update)})
                    return
                async for text in _update_events(call_, campaign_id, update, with_rows):
                    yield text
                if update.done:
                    yield sse("done", _status(update.campaign, update.counts))
                    return
        finally:
            # Also when the client went away: Starlette cancels the body, and the service's
            # stream is cancelled here with it.
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await progress.aclose()  # type: ignore[attr-defined]


async def _update_events(
    call_: Call, campaign_id: str, update: Any, with_rows: bool
) -> AsyncIterator[str]:
    hosts = [message_json(h) for h in update.hosts]
    yield sse("progress", {**_status(update.campaign, update.counts), "hosts": hosts})
    if not with_rows:
        return
    for host in update.hosts:
        if host.state == HostState.ANSWERED and host.row_count:
            async for rows in all_rows(call_, campaign_id, host.host_identifier):
                yield sse("rows", {"host_identifier": host.host_identifier, "rows": rows})


def _one_line(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return " ".join((text or type(exc).__name__).split())


EVENT_STREAM: Schema = {
    "type": "string",
    "description": "text/event-stream: `progress` events (counts and the hosts whose state"
    " changed), `rows` events (one host's rows), then `done`; `error` if the stream breaks",
}

ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/queries",
        list_queries,
        "live queries, newest first",
        "read-only",
        page_of(CAMPAIGN),
        (Param("include_closed", "also cancelled and expired ones", "boolean", default=True),),
        paged=True,
        tags=("live queries",),
    ),
    Endpoint(
        "POST",
        "/api/v1/queries",
        start_query,
        "start a live query on the targeted hosts",
        "operator",
        CAMPAIGN,
        body=START_BODY,
        status=201,
        tags=("live queries",),
    ),
    Endpoint(
        "POST",
        "/api/v1/queries/dry-run",
        count_targets,
        "how many hosts these targets reach now; nothing is started",
        "operator",
        REACH,
        body=DRY_RUN_BODY,
        tags=("live queries",),
    ),
    Endpoint(
        "GET",
        "/api/v1/queries/{query}",
        show_query,
        "a live query and its counts by state",
        "read-only",
        QUERY_STATUS,
        (QUERY_ID,),
        tags=("live queries",),
    ),
    Endpoint(
        "GET",
        "/api/v1/queries/{query}/hosts",
        query_hosts,
        "the per-host account of a live query",
        "read-only",
        page_of(HOST_STATE),
        (QUERY_ID, Param("state", "only hosts in this state", enum=STATES)),
        paged=True,
        tags=("live queries",),
    ),
    Endpoint(
        "POST",
        "/api/v1/queries/{query}/cancel",
        cancel_query,
        "stop handing a live query out",
        "operator",
        CAMPAIGN,
        (QUERY_ID,),
        tags=("live queries",),
    ),
    Endpoint(
        "GET",
        "/api/v1/queries/{query}/results",
        query_results,
        "the rows hosts answered, a page at a time (no cap)",
        "read-only",
        ROWS_PAGE,
        (
            QUERY_ID,
            Param("host", "only this host identifier's rows"),
            Param("cursor", "next_cursor of the previous page"),
            LIMIT,
        ),
        tags=("live queries",),
    ),
    Endpoint(
        "GET",
        "/api/v1/queries/{query}/export",
        export_results,
        "every row hosts answered as one CSV or JSON file, streamed",
        "read-only",
        EXPORT_CSV,
        (QUERY_ID, Param("format", "csv or json", enum=EXPORT_FORMATS, default="csv")),
        media="text/csv",
        alternatives=(("application/json", EXPORT_JSON),),
        tags=("live queries",),
    ),
    Endpoint(
        "GET",
        "/api/v1/queries/{query}/events",
        query_events,
        "progress and rows as Server-Sent Events, until every host is accounted for",
        "read-only",
        EVENT_STREAM,
        (QUERY_ID, Param("rows", "include the rows", "boolean", default=True)),
        event_stream=True,
        tags=("live queries",),
    ),
]
