"""The ingest process: ZeroMQ ROUTER for log batches, an fsynced spool, replay into ClickHouse,
and the LogStore gRPC service.

A batch goes one way through one module per stage: receive and ack (here) -> parse, dedup,
line identities, flatten, spool append+fsync (ingest_service.group_commit, with
ingest_service.line_identities and ingest_service.spool) -> replay, insert, checkpoint
(ingest_service.replay) -> the store (ingest_service.clickhouse_server_store or
embedded_clickhouse_store, behind ingest_service.log_store's protocol).
While ClickHouse is down or slow, batches are still acked once spooled, up to
`ingest_spool_max_bytes` unreplayed; replay catches up when it is back.

Frames on the ROUTER (the contract with the gateway's DEALER):
receive `[peer identity, correlation id, LogBatch, correlation id, LogBatch, ...]`, answer
`[peer identity, correlation id, LogAck, ...]`: one message carries every batch a gateway had
ready at once, and every ack for one peer that one group settled, because each ZeroMQ
message costs both processes thread wake-ups that dwarf the bytes it carries. Many batches
from one peer are in flight at once; acks go out as their groups are stored, not in arrival
order, so the gateway matches them by correlation id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from ingest_service import line_identities, metrics
from ingest_service.group_commit import GroupCommitter, Reply, recent_ids_from_spool
from ingest_service.log_store import LogStore, ReadOnlyQueries
from ingest_service.replay import ReplayedReads, Replayer
from ingest_service.schema import retention_days
from ingest_service.service import LogStoreService
from ingest_service.spool import Spool
from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.grpc_runtime import serve_grpc
from quarry.metrics_endpoint import start_metrics_endpoint
from quarry.settings import Settings
from quarry.shutdown import until_signalled
from quarry.zmq_curve import (
    CurveKeys,
    reload_authorized_clients,
    secure_router,
    server_keys,
    start_authenticator,
)

log = logging.getLogger(__name__)

# Deep queues: a gateway pipelines thousands of batches and must not be dropped for it.
HIGH_WATER_MARK = 100_000
# On shutdown, give the last acks this long to leave.
LINGER_MS = 2_000
GRPC_STOP_GRACE_S = 2.0
# On shutdown, replay for at most this long; what is left is replayed at the next start.
REPLAY_GRACE_S = 5.0
RETENTION_INTERVAL_S = 3600.0
# A refused gateway retries every few seconds: say so in the log at most this often.
REFUSAL_LOG_INTERVAL_S = 60.0
REFUSED_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    start_metrics_endpoint(settings, "ingest")
    store = open_log_store(settings)
    spool = await asyncio.to_thread(open_spool, settings)
    recent = await asyncio.to_thread(recent_ids_from_spool, spool)
    replayer = Replayer(
        spool,
        store,
        settings.ingest_flush_rows,
        settings.ingest_flush_interval_s,
        settings.ingest_keep_raw_batches,
    )
    lines = await asyncio.to_thread(line_identities.load, spool, settings.ingest_line_window_s)
    committer = GroupCommitter(spool, replayer, settings.ingest_spool_max_bytes, recent, lines)
    replayer.schema_ready = await create_schema(store)

    log_socket = open_log_socket(settings)
    service = LogStoreService(
        writable=ReplayedReads(store, spool, replayer),
        read_only=ReplayedReads(ReadOnlyQueries(store), spool, replayer),
    )
    grpc_server = await serve_grpc(
        f"{settings.bind_host}:{settings.ingest_port}",
        lambda server: logs_pb2_grpc.add_LogStoreServicer_to_server(service, server),
        "ingest",
    )

    replaying = asyncio.create_task(replayer.run())
    committer.start()
    receiver = asyncio.create_task(receive_batches(log_socket.router, committer))
    retention = asyncio.create_task(enforce_retention(store, retention_days()))
    log.info(
        "ingest ready: ZeroMQ %s (%s), store version %s, %d spooled batches to replay",
        log_socket.endpoint,
        "CURVE" if settings.zmq_curve else "plaintext",
        await store_version(store),
        spool.unreplayed_records(),
    )
    await until_signalled()

    log.info("stopping: spooling what was received, replaying for up to %ss", REPLAY_GRACE_S)
    receiver.cancel()
    retention.cancel()
    await committer.close()
    replayer.stop(REPLAY_GRACE_S)
    await replaying
    log.info("stopped with %d batches left to replay", spool.unreplayed_records())
    await grpc_server.stop(GRPC_STOP_GRACE_S)
    log_socket.close()
    spool.close()
    store.close()


@dataclass
class LogSocket:
    """The ROUTER gateways send batches to, and with CURVE its ZAP handler and refusal counter."""

    endpoint: str
    context: zmq.asyncio.Context
    router: zmq.asyncio.Socket
    tasks: list[asyncio.Task] = field(default_factory=list)
    # Every socket of the context must be closed before context.term() can return.
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for close in self.closers:
            close()
        self.router.close(linger=LINGER_MS)
        self.context.term()


def open_log_socket(settings: Settings) -> LogSocket:
    """Bind the ROUTER; with QUARRY_ZMQ_CURVE a CURVE server accepting allow-listed keys."""
    context = zmq.asyncio.Context()
    endpoint = f"tcp://{settings.bind_host}:{settings.ingest_zmq_port}"
    if not settings.zmq_curve:
        return LogSocket(endpoint, context, bind_router(context, endpoint))
    keys = server_keys(settings)
    # The ZAP handler must be up before the ROUTER binds, or early peers go unchecked.
    authenticator = start_authenticator(context, settings)
    router = bind_router(context, endpoint, keys)
    refusals = router.get_monitor_socket(REFUSED_HANDSHAKE_EVENTS)
    return LogSocket(
        endpoint,
        context,
        router,
        tasks=[
            asyncio.create_task(reload_authorized_clients(authenticator, settings)),
            asyncio.create_task(count_refused_handshakes(refusals)),
        ],
        closers=[lambda: refusals.close(linger=0), authenticator.stop],
    )


def open_log_store(settings: Settings) -> LogStore:
    """The ClickHouse server of settings.clickhouse_url, or embedded chdb when it is empty."""
    if settings.clickhouse_url:
        from ingest_service.clickhouse_server_store import ClickHouseServerStore

        return ClickHouseServerStore(settings.clickhouse_url, settings.clickhouse_cluster)
    # Imported only when used: chdb loads a large library.
    from ingest_service.embedded_clickhouse_store import EmbeddedClickHouseStore

    return EmbeddedClickHouseStore(settings.path("chdb"))


def open_spool(settings: Settings) -> Spool:
    spool = Spool(
        settings.path("spool"),
        settings.ingest_spool_segment_bytes,
        settings.ingest_spool_retention_s,
    )
    # Read at scrape time, so the figures are never stale.
    metrics.SPOOL_UNREPLAYED_BYTES.set_function(spool.unreplayed_bytes)
    metrics.SPOOL_OLDEST_AGE_SECONDS.set_function(spool.oldest_unreplayed_age_s)
    metrics.REPLAY_LAG_BATCHES.set_function(spool.unreplayed_records)
    return spool


async def enforce_retention(store: LogStore, days: dict[str, int]) -> None:
    """Every hour, drop whole partitions past their table's retention.

    Modern servers also expire rows by TTL; ClickHouse 18.16 has none, so this is how its
    tables stay bounded. The first pass waits one interval, so a restart loop cannot
    hammer the server.
    """
    while True:
        await asyncio.sleep(RETENTION_INTERVAL_S)
        try:
            dropped = await asyncio.to_thread(store.drop_expired_partitions, days)
        except Exception as exc:
            log.warning("retention: cannot drop expired partitions now: %s", exc)
            continue
        for table, partition in dropped:
            log.info("retention: dropped partition %s of %s", partition, table)


async def create_schema(store: LogStore) -> bool:
    """Create the tables now if the store answers; otherwise the first insert retries."""
    try:
        await asyncio.to_thread(store.ensure_schema)
    except Exception as exc:
        log.warning("cannot create the schema yet (will retry on first insert): %s", exc)
        return False
    return True


async def store_version(store: LogStore) -> str:
    try:
        return await asyncio.to_thread(store.version)
    except Exception as exc:
        return f"unknown ({exc})"


async def count_refused_handshakes(monitor: zmq.asyncio.Socket) -> None:
    """Count (and log, now and then) the CURVE handshakes the ROUTER refused."""
    last_logged = -REFUSAL_LOG_INTERVAL_S
    while True:
        event = await recv_monitor_message(monitor)
        metrics.CURVE_REFUSALS.inc()
        if time.monotonic() - last_logged >= REFUSAL_LOG_INTERVAL_S:
            last_logged = time.monotonic()
            log.warning(
                "refused a ZeroMQ CURVE handshake (%s): a gateway key not in "
                "authorized_clients, or a peer without CURVE; see "
                "quarry_ingest_curve_refusals_total",
                zmq.Event(event["event"]).name,
            )


def bind_router(
    context: zmq.asyncio.Context, endpoint: str, curve: CurveKeys | None = None
) -> zmq.asyncio.Socket:
    """The ROUTER gateways send batches to; a CURVE server when curve keys are given."""
    router = context.socket(zmq.ROUTER)
    if curve is not None:
        secure_router(router, curve)
    router.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    router.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    router.setsockopt(zmq.LINGER, LINGER_MS)
    # Acks to a gateway that went away are dropped, not raised: it has answered osquery
    # with a timeout error already, and osquery will retry the batch.
    router.setsockopt(zmq.ROUTER_MANDATORY, 0)
    router.setsockopt(zmq.TCP_KEEPALIVE, 1)
    router.bind(endpoint)
    return router


async def receive_batches(router: zmq.asyncio.Socket, committer: GroupCommitter) -> None:
    """Hand every batch to the committer as it arrives. Messages already queued are received
    without yielding to the event loop (pyzmq reads them at once), so the batches of one
    turn share one spool append."""
    outbox = AckOutbox(router)
    while True:
        frames = await router.recv_multipart()
        if len(frames) < 3 or len(frames) % 2 == 0:
            await reply_bad_framing(router, frames)
            continue
        peer = frames[0]
        for index in range(1, len(frames), 2):
            committer.submit(frames[index + 1], outbox.sender(peer, frames[index]))


class AckOutbox:
    """Acks waiting to leave, per peer: sent together once the current event-loop turn ends
    (a group's settle answers all its batches in one turn)."""

    def __init__(self, router: zmq.asyncio.Socket) -> None:
        self.router = router
        self.waiting: dict[bytes, list[bytes]] = {}

    def sender(self, peer: bytes, correlation_id: bytes) -> Reply:
        def send_ack(ack: logs_pb2.LogAck) -> None:
            if not self.waiting:
                asyncio.get_running_loop().call_soon(self.flush)
            self.waiting.setdefault(peer, []).extend((correlation_id, ack.SerializeToString()))

        return send_ack

    def flush(self) -> None:
        waiting, self.waiting = self.waiting, {}
        for peer, frames in waiting.items():
            try:
                self.router.send_multipart([peer, *frames], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                # The gateway is gone or not reading: it answers osquery itself on timeout.
                log.warning("dropped %d acks for a gateway: %s", len(frames) // 2, exc)


async def reply_bad_framing(router: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    log.warning("message with %d frames, expected an odd number of at least 3", len(frames))
    correlation_id = frames[1] if len(frames) > 3 else b""
    error = (
        f"expected [identity, correlation id, LogBatch, ...], got {len(frames)} frames; "
        "send [correlation id, LogBatch] pairs from a DEALER"
    )
    ack = logs_pb2.LogAck(ok=False, error=error)
    await router.send_multipart([frames[0], correlation_id, ack.SerializeToString()])
