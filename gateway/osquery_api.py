"""The osquery TLS API: every endpoint osqueryd calls, in one file.

osquery ignores HTTP status codes and judges a response by its JSON body alone
(docs/osquery-protocol.md §2.5, §3.1): `node_invalid: true` makes it drop its key
and re-enroll, any top-level `error` member makes the request fail (so osquery keeps
its data and retries). Every answer here is therefore a JSON object; the status
code is set for people reading logs, not for osquery.

Each endpoint is served at Fleet's path and at the short path of osquery's docs, so
an existing Fleet flagfile works unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
import orjson
from prometheus_client import Counter

from gateway import metrics
from gateway.carving.limits import carve_limits
from gateway.carving.sessions import carving_for
from gateway.gateway_state import GatewayState
from gateway.log_lines import batch_id, encode_lines
from gateway.node_cache import NodeIdentity
from gateway.request_body import (
    BAD_FIELD,
    BadRequest,
    BodyLimits,
    node_key_of,
    read_json_object,
    too_deep_to_forward,
)
from gateway.routing import Answer, Request, Route
from osquery_config.host_queries import is_host_query, parse_wire_name
from protos.v1 import distributed_pb2, enroll_pb2, logs_pb2
from quarry.runtime.settings import Settings
from quarry.state.carve_store import CarveRejected

log = logging.getLogger(__name__)

LOG_KINDS = {"result": logs_pb2.RESULT, "status": logs_pb2.STATUS}
NODE_INVALID = {"node_invalid": True}
# A node waiting for approval gets an empty config object (osquery accepts it and
# schedules nothing) and no live queries.
PENDING_CONFIG = b"{}"
NO_LIVE_QUERIES = b'{"queries":{}}'


class Refusal(Exception):
    """Answer osquery with this JSON object (an error, or node_invalid)."""

    def __init__(self, outcome: str, body: dict, status: int) -> None:
        self.outcome, self.body, self.status = outcome, body, status


def json_response(body: dict | bytes, status: int = 200, close: bool = False) -> Answer:
    """A JSON answer; `close` ends the connection after it (the rest of the body is unread)."""
    return Answer(body if isinstance(body, bytes) else orjson.dumps(body), status, close)


def error(message: str, status: int = 500) -> Refusal:
    return Refusal("bad_request" if status == 400 else "error", {"error": message}, status)


# --- enroll ---------------------------------------------------------------------------


async def enroll(request: Request, state: GatewayState, body: dict) -> Answer:
    secret = _enroll_secret(request, state.settings.enroll_secret_keys(), body)
    _check_enroll_fields(body)
    details = body.get("host_details")
    if state.enrollments.full:
        metrics.ENROLLMENTS.labels("unavailable").inc()
        raise error("too many enrollments in progress; retry later", 503)
    try:
        reply = await state.enrollments.enroll(
            enroll_pb2.EnrollRequest(
                enroll_secret=secret,
                host_identifier=_text(body.get("host_identifier")),
                platform_type=_text(body.get("platform_type")),
                host_details_json=orjson.dumps(details).decode() if details else "",
                remote_addr=request.client[0] if request.client else "",
                client_certificate=_client_certificate(request),
            )
        )
    except grpc.aio.AioRpcError as exc:
        metrics.ENROLLMENTS.labels("unavailable").inc()
        raise error(f"enrollment is unavailable: {exc.code().name}", 503) from exc
    if not reply.ok:
        metrics.ENROLLMENTS.labels("refused").inc()
        # osquery reads only node_key here; the reason is for the people reading logs.
        raise Refusal("node_invalid", {"node_invalid": True, "error": reply.reason}, 401)
    state.nodes.add(reply.node, reply.node_key)
    metrics.ENROLLMENTS.labels("pending" if reply.node.pending else "ok").inc()
    return json_response({"node_key": reply.node_key})


def _enroll_secret(request: Request, names: tuple[str, ...], body: dict) -> str:
    """The secret under the first name present: the body first, then the URI.

    osquery sends it under --tls_enroll_override (default enroll_secret) in the body, and
    with --tls_secret_always in the query string as well (docs/osquery-protocol.md); a
    fleet mixing both names enrolls through one gateway (docs/enrollment.md).
    """
    for name in names:
        secret = body.get(name)
        if isinstance(secret, str) and secret:
            return secret
    for name in names:
        secret = request.query_params.get(name, "")
        if secret:
            return secret
    return ""


def _check_enroll_fields(body: dict) -> None:
    """osquery sends strings and an object of tables; anything else is not osquery."""
    for name in ("host_identifier", "platform_type"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str | int) or isinstance(value, bool)):
            raise error(f"{name} must be a string", 400)
    if not isinstance(body.get("host_details") or {}, dict):
        raise error("host_details must be an object of table name -> first row", 400)


def _client_certificate(request: Request) -> enroll_pb2.ClientCertificate | None:
    """The certificate the client verified with on this connection, if it presented one."""
    certificate = request.certificate
    if certificate is None:
        return None
    return enroll_pb2.ClientCertificate(
        subject=certificate.subject,
        subject_alt_names=certificate.subject_alt_names,
        sha256_fingerprint=certificate.sha256_fingerprint,
    )


# --- config ---------------------------------------------------------------------------


async def config(request: Request, state: GatewayState, body: dict) -> Answer:
    """The node's own config: composed for its group (platform, tags, labels) from memory."""
    node = await authenticate(request, state, body)
    if node.pending:
        return json_response(PENDING_CONFIG)
    served = state.config.config_for(node)
    if served is None:
        raise error("the config is not available yet", 503)
    state.config.fetches.fetched(node.node_id, served.sha1, served.version)
    metrics.CONFIG_SERVED_BYTES.observe(len(served.body))
    return json_response(served.body)


# --- logger ---------------------------------------------------------------------------


async def log_batch(request: Request, state: GatewayState, body: dict) -> Answer:
    node = await authenticate(request, state, body)
    log_type = body.get("log_type")
    kind = LOG_KINDS.get(log_type) if isinstance(log_type, str) else None
    if kind is None:
        raise error(f"log_type must be 'result' or 'status', not {log_type!r}", 400)
    data = body.get("data")
    if not isinstance(data, list):
        raise error("data must be a JSON array of log objects", 400)
    if not data:
        return json_response({})
    await store_logs(state, node, kind, data)
    return json_response({})


async def store_logs(
    state: GatewayState,
    node: NodeIdentity,
    kind: int,
    records: list,
    campaign_id: str = "",
    received_at: int = 0,
) -> None:
    """Hand a batch to ingest and return once it is stored; otherwise raise an error.

    Log and status lines carry an identity each, so lines osquery re-sends inside a later,
    merged batch are stored once; a live query's rows are one answer, re-sent whole, and the
    batch's id suffices (docs/adr/0012-line-level-exactly-once.md). `received_at`: the
    write's time, when several batches of one write must agree on it.
    """
    whole_answer = kind == logs_pb2.DISTRIBUTED
    if whole_answer:
        data_json = line_ids = orjson.dumps(records)
    else:
        data_json, line_ids = encode_lines(records)
    batch = logs_pb2.LogBatch(
        batch_id=batch_id(node.node_id, kind, campaign_id, line_ids),
        kind=kind,  # type: ignore[arg-type]
        node_id=node.node_id,
        host_identifier=node.host_identifier,
        received_at=received_at or int(time.time()),
        data_json=data_json,
        campaign_id=campaign_id,
        line_ids=b"" if whole_answer else line_ids,
    )
    ack = await state.logs.send(batch)
    kind_name = logs_pb2.LogKind.Name(kind).lower()  # type: ignore[arg-type]
    if not ack.ok:
        metrics.LOG_BATCHES.labels(kind_name, "error").inc()
        log.warning("log batch from %s not stored: %s", node.node_id, ack.error)
        raise error(f"logs not stored, retry later: {ack.error}", 503)
    metrics.LOG_BATCHES.labels(kind_name, "duplicate" if ack.duplicate else "ok").inc()


# --- distributed ----------------------------------------------------------------------


async def distributed_read(request: Request, state: GatewayState, body: dict) -> Answer:
    """The node's pending live queries (and their discovery gates), from memory, and the
    scheduled host queries due for it (vitals, software: docs/inventory.md).

    `accelerate` makes osquery read again within seconds while it has a live query, so
    answers come back fast instead of one distributed_interval later; scheduled queries
    are in no hurry and do not ask for it.
    """
    node = await authenticate(request, state, body)
    if node.pending:
        return json_response(NO_LIVE_QUERIES)
    campaigns = state.live_queries.pending_for(node)
    scheduled = state.host_queries.due(node.node_id, node.platform)
    if not campaigns and not scheduled:
        return json_response(NO_LIVE_QUERIES)
    for campaign in campaigns:
        state.activity.delivered(campaign.campaign_id, node.node_id, node.host_identifier)
    answer: dict = {"queries": {**scheduled, **{c.campaign_id: c.sql for c in campaigns}}}
    if campaigns:
        answer["accelerate"] = state.settings.distributed_accelerate_s
    discovery = {c.campaign_id: c.discovery_sql for c in campaigns if c.discovery_sql}
    if discovery:
        answer["discovery"] = discovery
    return json_response(answer)


async def distributed_write(request: Request, state: GatewayState, body: dict) -> Answer:
    node = await authenticate(request, state, body)
    results = _rows_by_campaign(body)
    scheduled = {name: rows for name, rows in results.items() if is_host_query(name)}
    rows_by_campaign = {name: rows for name, rows in results.items() if name not in scheduled}
    answers = [
        _answer(body, node, campaign_id, len(rows))
        for campaign_id, rows in rows_by_campaign.items()
    ]
    # Rows and statuses go to ClickHouse before the answers are recorded as answered.
    stores = [
        store_logs(state, node, logs_pb2.DISTRIBUTED, rows, campaign_id)
        for campaign_id, rows in rows_by_campaign.items()
        if rows
    ]
    if answers:
        stores.append(store_logs(state, node, logs_pb2.DISTRIBUTED_STATUS, _statuses(answers)))
    stores.extend(_host_query_stores(state, node, body, scheduled))
    await asyncio.gather(*stores)
    if answers:
        try:
            await state.activity.answer(answers)
        except Exception as exc:
            raise error(f"live query answers not recorded, retry later: {exc}", 503) from exc
    for answer in answers:
        state.live_queries.mark_answered(answer.campaign_id, node.node_id)
    return json_response({})


def _host_query_stores(
    state: GatewayState, node: NodeIdentity, body: dict, scheduled: dict[str, list]
) -> list[Awaitable[None]]:
    """Stores of the answers to scheduled host queries, never a campaign: one batch of rows
    (a line per answer) and one of statuses (a line per query), so a vitals write costs
    ingest two batches, not one per query. Each line names its slot: osquery re-sending a
    write, alone or merged with newer answers, repeats lines ingest stores once (ADR 0012).

    Each answer is memorised as its slot's, so this gateway does not ask it again even if
    another replica asked it. A name that is ours but unreadable (a later Quarry's) is
    dropped: refusing the write would make osquery send it for ever.
    """
    collected_at = int(time.time())
    answers, statuses = [], []
    for name, rows in scheduled.items():
        wire = parse_wire_name(name)
        if wire is None:
            metrics.HOST_QUERY_ANSWERS.labels("unknown", "unreadable_name").inc()
            continue
        state.host_queries.answered(node.node_id, wire)
        answer = _answer(body, node, name, len(rows))
        # Label values only from this gateway's groups: a node must not mint new series.
        group = wire.group if wire.group in state.host_queries.group_names else "other"
        outcome = "ok" if answer.status == 0 else "failed"
        metrics.HOST_QUERY_ANSWERS.labels(group, outcome).inc()
        which = {"group": wire.group, "query": wire.query, "slot": wire.slot}
        statuses.append(which | _status_fields(answer))
        if rows:
            answers.append(which | {"rows": rows})
    stores = []
    if answers:
        stores.append(store_logs(state, node, logs_pb2.HOST_QUERY, answers, "", collected_at))
    if statuses:
        stores.append(
            store_logs(state, node, logs_pb2.HOST_QUERY_STATUS, statuses, "", collected_at)
        )
    return stores


def _rows_by_campaign(body: dict) -> dict[str, list]:
    """Each query id's rows, after checking the write's fields have osquery's types.

    A query id may carry "" or null instead of rows (older osquery, failed queries).
    """
    results = body.get("queries")
    if not isinstance(results, dict):
        raise error("queries must be an object of query id -> rows", 400)
    for campaign_id, rows in results.items():
        if rows in ("", None):
            continue
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise error(f"queries[{campaign_id[:100]!r}] must be an array of row objects", 400)
    for name, kinds in WRITE_MAPS.items():
        values = body.get(name, {})
        if not isinstance(values, dict) or not all(
            isinstance(value, kinds) for value in values.values()
        ):
            raise error(f"{name} must be an object of query id -> {WRITE_MAP_TYPES[name]}", 400)
    return {
        campaign_id: rows if isinstance(rows, list) else [] for campaign_id, rows in results.items()
    }


# The per-query maps of a distributed write, and what their values may be.
WRITE_MAPS: dict[str, tuple[type, ...]] = {
    "statuses": (int, str),
    "messages": (str,),
    "stats": (dict,),
}
WRITE_MAP_TYPES = {"statuses": "status code", "messages": "message", "stats": "stats object"}


def _statuses(answers: list[distributed_pb2.Answer]) -> list[dict]:
    """The DISTRIBUTED_STATUS lines, one per query: no receive time in them, so a write osquery
    sends again (alone or merged with newer answers) repeats its lines and is stored once."""
    return [{"campaign_id": answer.campaign_id} | _status_fields(answer) for answer in answers]


def _status_fields(answer: distributed_pb2.Answer) -> dict:
    """How one query went on the node: osquery's status, message and stats."""
    return {
        "status": answer.status,
        "message": answer.message,
        "row_count": answer.row_count,
        "wall_time_ms": answer.stats.wall_time_ms,
        "user_time": answer.stats.user_time,
        "system_time": answer.stats.system_time,
        "memory": answer.stats.memory,
    }


def _answer(body: dict, node: NodeIdentity, campaign_id: str, rows: int) -> distributed_pb2.Answer:
    stats = _dict(_dict(body.get("stats")).get(campaign_id))
    return distributed_pb2.Answer(
        campaign_id=campaign_id,
        node_id=node.node_id,
        host_identifier=node.host_identifier,
        status=_int(_dict(body.get("statuses")).get(campaign_id), INT32_MAX),
        message=_text(_dict(body.get("messages")).get(campaign_id)),
        row_count=rows,
        stats=distributed_pb2.QueryStats(
            wall_time_ms=_int(stats.get("wall_time_ms")),
            user_time=_int(stats.get("user_time")),
            system_time=_int(stats.get("system_time")),
            memory=_int(stats.get("memory")),
        ),
        answered_at=int(time.time()),
    )


# --- carving (docs/carving.md) ---------------------------------------------------------


async def carve_begin(request: Request, state: GatewayState, body: dict) -> Answer:
    """Open a carve session; osquery reads only `session_id` (no session: the carve fails)."""
    node = await authenticate(request, state, body)
    if node.pending:
        raise error("this node awaits approval and cannot carve yet", 403)
    try:
        carve = await carving_for(state.settings).begin(node, body)
    except CarveRejected as exc:
        raise error(str(exc), exc.status) from exc
    return json_response({"session_id": carve.session_id})


async def carve_block(request: Request, state: GatewayState, body: dict) -> Answer:
    """Store one block; the session id is its credential (the body has no node key).

    osquery ignores this answer's content, so an error here is for people reading logs
    and for the missing block to show in the carve's progress.
    """
    sender = await _carve_sender(state, node_key_of(request, body))
    try:
        carve = await carving_for(state.settings).receive_block(body, sender)
    except CarveRejected as exc:
        raise error(str(exc), exc.status) from exc
    return json_response(
        {"blocks_received": carve.blocks_received, "block_count": carve.block_count}
    )


async def _carve_sender(state: GatewayState, key: str) -> NodeIdentity | None:
    """The node a continue request's header names, if known: another node's block is refused."""
    if not key:
        return None
    try:
        return await state.nodes.authenticate(key)
    except grpc.aio.AioRpcError:
        return None  # the session id alone still identifies the carve


# --- shared ---------------------------------------------------------------------------


async def authenticate(request: Request, state: GatewayState, body: dict) -> NodeIdentity:
    """The node behind the request's key; node_invalid when there is none."""
    try:
        node = await state.nodes.authenticate(node_key_of(request, body))
    except grpc.aio.AioRpcError as exc:
        raise error(f"cannot check the node key now: {exc.code().name}", 503) from exc
    if node is None:
        raise Refusal("node_invalid", NODE_INVALID, 401)
    state.activity.seen(node.node_id)
    return node


Handler = Callable[[Request, GatewayState, dict], Awaitable[Answer]]
# The most bytes an endpoint's body may have on the wire, from the settings.
BodyLimit = Callable[[Settings], int]

BODY_LIMITS: dict[str, BodyLimit] = {
    "enroll": lambda settings: settings.request_max_bytes_other,
    "config": lambda settings: settings.request_max_bytes_other,
    "log": lambda settings: settings.request_max_bytes_log,
    "distributed_read": lambda settings: settings.request_max_bytes_other,
    "distributed_write": lambda settings: settings.request_max_bytes_distributed_write,
    "carve_begin": lambda settings: settings.request_max_bytes_other,
    "carve_block": lambda settings: carve_limits(settings).max_block_request_bytes,
}


def default_body_limit(settings: Settings) -> int:
    """For an endpoint without its own entry in BODY_LIMITS."""
    return settings.request_max_bytes_log


class Endpoint(Route):
    """A handler as a route: the body read within limits, refusals as JSON, counted and timed.

    `body_limit` defaults to BODY_LIMITS[name], else default_body_limit.
    """

    def __init__(self, name: str, handler: Handler, body_limit: BodyLimit | None = None) -> None:
        self.name, self.handler = name, handler
        self.limit_of = body_limit or BODY_LIMITS.get(name, default_body_limit)
        # The per-request cost matters at thousands of check-ins per second: look the
        # labelled metrics and the limits up once, not on every request.
        self.duration, self.request_size, self.response_size = (
            metric.labels(name)
            for metric in (metrics.REQUEST_SECONDS, metrics.REQUEST_BYTES, metrics.RESPONSE_BYTES)
        )
        metrics.requests_in_flight.setdefault(name, 0)
        self.outcomes: dict[str, Counter] = {}

    def body_limits(self, state: GatewayState) -> BodyLimits:
        limits = state.body_limits.get(self.name)
        if limits is None:
            limits = BodyLimits.from_settings(state.settings, self.limit_of(state.settings))
            state.body_limits[self.name] = limits
        return limits

    async def serve(self, request: Request) -> Answer:
        started = time.perf_counter()
        state: GatewayState = request.state
        outcome = "ok"
        in_flight = metrics.requests_in_flight
        in_flight[self.name] += 1
        try:
            response = await self._handle(request, state)
        except BadRequest as exc:
            return self._refused(request, exc, started)
        except Refusal as refusal:
            if refusal.outcome == "bad_request":
                metrics.REFUSED_REQUESTS.labels(self.name, BAD_FIELD).inc()
            outcome, response = refusal.outcome, json_response(refusal.body, refusal.status)
        except Exception:
            log.exception("%s failed", self.name)
            outcome = "error"
            response = json_response({"error": "internal server error"}, 500)
        finally:
            in_flight[self.name] -= 1
        return self._count(request, outcome, response, started)

    def refuse(self, request: Request, refusal: BadRequest) -> Answer:
        return self._refused(request, refusal, time.perf_counter())

    async def _handle(self, request: Request, state: GatewayState) -> Answer:
        body = read_json_object(request, self.body_limits(state))
        try:
            return await self.handler(request, state, body)
        except orjson.JSONEncodeError as exc:
            # The handler re-serialized part of the body (data, rows, host details).
            raise too_deep_to_forward() from exc

    def _refused(self, request: Request, exc: BadRequest, started: float) -> Answer:
        metrics.REFUSED_REQUESTS.labels(self.name, exc.reason).inc()
        response = json_response({"error": str(exc)}, exc.status, close=exc.close)
        return self._count(request, "bad_request", response, started)

    def _count(self, request: Request, outcome: str, response: Answer, started: float) -> Answer:
        counter = self.outcomes.get(outcome)
        if counter is None:
            counter = self.outcomes[outcome] = metrics.REQUESTS.labels(self.name, outcome)
        counter.inc()
        self.duration.observe(time.perf_counter() - started)
        self.request_size.observe(_declared_size(request))
        self.response_size.observe(len(response.body))
        return response


def _declared_size(request: Request) -> int:
    """The body size from Content-Length (osquery always sends it); 0 when absent or bogus."""
    try:
        return max(0, int(request.headers.get("content-length", "0")))
    except ValueError:
        return 0


ENDPOINTS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "enroll": (enroll, ("/api/v1/osquery/enroll", "/enroll")),
    "config": (config, ("/api/v1/osquery/config", "/config")),
    "log": (log_batch, ("/api/v1/osquery/log", "/logger", "/log")),
    "distributed_read": (
        distributed_read,
        ("/api/v1/osquery/distributed/read", "/distributed/read"),
    ),
    "distributed_write": (
        distributed_write,
        ("/api/v1/osquery/distributed/write", "/distributed/write"),
    ),
    "carve_begin": (carve_begin, ("/api/v1/osquery/carve/begin", "/carve/start")),
    "carve_block": (carve_block, ("/api/v1/osquery/carve/block", "/carve/continue")),
}


def routes() -> dict[str, Route]:
    """Each path osquery may call, and its endpoint (GET and POST: osquery sends POST)."""
    return {
        path: Endpoint(name, handler)
        for name, (handler, paths) in ENDPOINTS.items()
        for path in paths
    }


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


INT32_MAX = (1 << 31) - 1
UINT64_MAX = (1 << 64) - 1


def _int(value: object, maximum: int = UINT64_MAX) -> int:
    """A non-negative integer within the protobuf field's range; 0 when it is not a number."""
    try:
        return min(maximum, max(0, int(value)))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0
