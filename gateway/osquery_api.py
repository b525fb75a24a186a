"""The osquery TLS API: every endpoint osqueryd calls, in one file.

osquery ignores HTTP status codes and judges a response by its JSON body alone
(shared/osquery-protocol.md §2.5, §3.1): `node_invalid: true` makes it drop its key
and re-enroll, any top-level `error` member makes the request fail (so osquery keeps
its data and retries). Every answer here is therefore a JSON object; the status
code is set for people reading logs, not for osquery.

Each endpoint is served at Fleet's path and at the short path of osquery's docs, so
an existing Fleet flagfile works unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import client_certificates, metrics
from gateway.gateway_state import GatewayState
from gateway.node_cache import NodeIdentity
from gateway.request_body import BadRequest, node_key_of, read_json_object
from protos.v1 import distributed_pb2, enroll_pb2, logs_pb2

log = logging.getLogger(__name__)

LOG_KINDS = {"result": logs_pb2.RESULT, "status": logs_pb2.STATUS}
NODE_INVALID = {"node_invalid": True}
# A node waiting for approval gets an empty config object (osquery accepts it and
# schedules nothing) and no live queries.
PENDING_CONFIG = b"{}"
NO_LIVE_QUERIES = b'{"queries":{}}'
ENROLL_TIMEOUT_S = 10.0


class Refusal(Exception):
    """Answer osquery with this JSON object (an error, or node_invalid)."""

    def __init__(self, outcome: str, body: dict, status: int) -> None:
        self.outcome, self.body, self.status = outcome, body, status


def json_response(body: dict | bytes, status: int = 200) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content, status_code=status, media_type="application/json")


def error(message: str, status: int = 500) -> Refusal:
    return Refusal("bad_request" if status == 400 else "error", {"error": message}, status)


# --- enroll ---------------------------------------------------------------------------


async def enroll(request: Request, state: GatewayState, body: dict) -> Response:
    key_name = state.settings.enroll_secret_key
    secret = body.get(key_name)
    if not isinstance(secret, str) or not secret:
        secret = request.query_params.get(key_name, "")  # --tls_secret_always
    details = body.get("host_details")
    try:
        reply = await state.enroll_stub.Enroll(
            enroll_pb2.EnrollRequest(
                enroll_secret=secret,
                host_identifier=_text(body.get("host_identifier")),
                platform_type=_text(body.get("platform_type")),
                host_details_json=orjson.dumps(details).decode() if details else "",
                remote_addr=request.client.host if request.client else "",
                client_certificate=_client_certificate(request),
            ),
            timeout=ENROLL_TIMEOUT_S,
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


def _client_certificate(request: Request) -> enroll_pb2.ClientCertificate | None:
    """The certificate the client verified with on this connection, if it presented one."""
    certificate = client_certificates.certificate_of(request.client)
    if certificate is None:
        return None
    return enroll_pb2.ClientCertificate(
        subject=certificate.subject,
        subject_alt_names=certificate.subject_alt_names,
        sha256_fingerprint=certificate.sha256_fingerprint,
    )


# --- config ---------------------------------------------------------------------------


async def config(request: Request, state: GatewayState, body: dict) -> Response:
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


async def log_batch(request: Request, state: GatewayState, body: dict) -> Response:
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
    await store_logs(state, node, kind, orjson.dumps(data))
    return json_response({})


async def store_logs(
    state: GatewayState,
    node: NodeIdentity,
    kind: int,
    data_json: bytes,
    campaign_id: str = "",
) -> None:
    """Hand a batch to ingest and return once it is stored; otherwise raise an error."""
    batch = logs_pb2.LogBatch(
        batch_id=_batch_id(node.node_id, kind, campaign_id, data_json),
        kind=kind,  # type: ignore[arg-type]
        node_id=node.node_id,
        host_identifier=node.host_identifier,
        received_at=int(time.time()),
        data_json=data_json,
        campaign_id=campaign_id,
    )
    ack = await state.logs.send(batch)
    kind_name = logs_pb2.LogKind.Name(kind).lower()  # type: ignore[arg-type]
    if not ack.ok:
        metrics.LOG_BATCHES.labels(kind_name, "error").inc()
        log.warning("log batch from %s not stored: %s", node.node_id, ack.error)
        raise error(f"logs not stored, retry later: {ack.error}", 503)
    metrics.LOG_BATCHES.labels(kind_name, "duplicate" if ack.duplicate else "ok").inc()


def _batch_id(node_id: str, kind: int, campaign_id: str, data_json: bytes) -> str:
    """Same node, kind and content: same id, so a re-sent POST is stored once."""
    digest = hashlib.sha256(f"{node_id}\0{kind}\0{campaign_id}\0".encode())
    digest.update(data_json)
    return digest.hexdigest()


# --- distributed ----------------------------------------------------------------------


async def distributed_read(request: Request, state: GatewayState, body: dict) -> Response:
    """The node's pending live queries (and their discovery gates), from memory.

    `accelerate` makes osquery read again within seconds while it has work, so answers
    come back fast instead of one distributed_interval later.
    """
    node = await authenticate(request, state, body)
    campaigns = [] if node.pending else state.live_queries.pending_for(node)
    if not campaigns:
        return json_response(NO_LIVE_QUERIES)
    for campaign in campaigns:
        state.activity.delivered(campaign.campaign_id, node.node_id, node.host_identifier)
    answer: dict = {
        "queries": {c.campaign_id: c.sql for c in campaigns},
        "accelerate": state.settings.distributed_accelerate_s,
    }
    discovery = {c.campaign_id: c.discovery_sql for c in campaigns if c.discovery_sql}
    if discovery:
        answer["discovery"] = discovery
    return json_response(answer)


async def distributed_write(request: Request, state: GatewayState, body: dict) -> Response:
    node = await authenticate(request, state, body)
    results = body.get("queries")
    if not isinstance(results, dict):
        raise error("queries must be an object of query id -> rows", 400)
    rows_by_campaign = {
        campaign_id: rows if isinstance(rows, list) else [] for campaign_id, rows in results.items()
    }
    answers = [
        _answer(body, node, campaign_id, len(rows))
        for campaign_id, rows in rows_by_campaign.items()
    ]
    # Rows and statuses go to ClickHouse before the answers are recorded as answered.
    stores = [
        store_logs(state, node, logs_pb2.DISTRIBUTED, orjson.dumps(rows), campaign_id)
        for campaign_id, rows in rows_by_campaign.items()
        if rows
    ]
    if answers:
        stores.append(store_logs(state, node, logs_pb2.DISTRIBUTED_STATUS, _statuses(answers)))
    await asyncio.gather(*stores)
    try:
        await state.activity.answer(answers)
    except Exception as exc:
        raise error(f"live query answers not recorded, retry later: {exc}", 503) from exc
    for answer in answers:
        state.live_queries.mark_answered(answer.campaign_id, node.node_id)
    return json_response({})


def _statuses(answers: list[distributed_pb2.Answer]) -> bytes:
    """The DISTRIBUTED_STATUS batch: no receive time in it, so a re-sent write has the same id."""
    return orjson.dumps(
        [
            {
                "campaign_id": answer.campaign_id,
                "status": answer.status,
                "message": answer.message,
                "row_count": answer.row_count,
                "wall_time_ms": answer.stats.wall_time_ms,
                "user_time": answer.stats.user_time,
                "system_time": answer.stats.system_time,
                "memory": answer.stats.memory,
            }
            for answer in answers
        ]
    )


def _answer(body: dict, node: NodeIdentity, campaign_id: str, rows: int) -> distributed_pb2.Answer:
    stats = _dict(_dict(body.get("stats")).get(campaign_id))
    return distributed_pb2.Answer(
        campaign_id=campaign_id,
        node_id=node.node_id,
        host_identifier=node.host_identifier,
        status=_int(_dict(body.get("statuses")).get(campaign_id)),
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


# --- carving (issue 11) ----------------------------------------------------------------


async def carve(request: Request, state: GatewayState, body: dict) -> Response:
    # osquery's carver reads only session_id, so without one the carve fails cleanly.
    raise error("file carving is not enabled on this Quarry server", 501)


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


Handler = Callable[[Request, GatewayState, dict], Awaitable[Response]]


def endpoint(name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: parse the body, turn refusals into JSON, count and time it."""

    async def serve(request: Request) -> Response:
        started = time.perf_counter()
        state: GatewayState = request.app.state.gateway
        outcome = "ok"
        try:
            response = await handler(request, state, await read_json_object(request))
        except BadRequest as exc:
            outcome, response = "bad_request", json_response({"error": str(exc)}, 400)
        except Refusal as refusal:
            outcome, response = refusal.outcome, json_response(refusal.body, refusal.status)
        except Exception:
            log.exception("%s failed", name)
            outcome = "error"
            response = json_response({"error": "internal server error"}, 500)
        metrics.REQUESTS.labels(name, outcome).inc()
        metrics.REQUEST_SECONDS.labels(name).observe(time.perf_counter() - started)
        metrics.REQUEST_BYTES.labels(name).observe(_declared_size(request))
        metrics.RESPONSE_BYTES.labels(name).observe(len(response.body))
        return response

    return serve


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
    "carve_begin": (carve, ("/api/v1/osquery/carve/begin", "/carve/start")),
    "carve_block": (carve, ("/api/v1/osquery/carve/block", "/carve/continue")),
}


def routes() -> list[Route]:
    return [
        Route(path, endpoint(name, handler), methods=["POST", "GET"])
        for name, (handler, paths) in ENDPOINTS.items()
        for path in paths
    ]


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _int(value: object) -> int:
    try:
        return max(0, int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
