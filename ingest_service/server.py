"""The ingest process: ZeroMQ ROUTER for log batches, an fsynced spool, replay into ClickHouse,
the LogStore gRPC service, and quarry.hosts kept from the enroll and config services' feeds
(ingest_service.host_inventory, docs/adr/0020-hosts-table.md).

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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from ingest_service import line_identities, metrics
from ingest_service.group_commit import GroupCommitter, Reply, recent_ids_from_spool
from ingest_service.host_inventory import HostInventory
from ingest_service.log_store import LogStore, ReadOnlyQueries
from ingest_service.replay import ReplayedReads, Replayer
from ingest_service.schema import retention_days
from ingest_service.service import LogStoreService
from ingest_service.spool import Spool
from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.encryption.zmq_curve import (
    CurveKeys,
    reload_authorized_clients,
    secure_router,
    server_keys,
    start_authenticator,
)
from quarry.runtime.embedded_clickhouse import embedded_store_problem
from quarry.runtime.metrics_endpoint import start_metrics_endpoint
from quarry.runtime.settings import Settings
from quarry.runtime.shutdown import until_signalled
from quarry.serving.grpc_runtime import serve_grpc
from quarry.state.directory import chdb_dir, spool_dir

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
        alerts=store,
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
    inventory = HostInventory(settings, store) if settings.ingest_hosts_table else None
    hosts = asyncio.create_task(inventory.run()) if inventory else None
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
    if inventory is not None and hosts is not None:
        hosts.cancel()
        await asyncio.gather(hosts, return_exceptions=True)
        await inventory.close()
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
    problem = embedded_store_problem(settings)
    if problem:
        raise SystemExit(problem)
    # Imported only when used: chdb loads a large library, and is an extra.
    from ingest_service.embedded_clickhouse_store import EmbeddedClickHouseStore

    return EmbeddedClickHouseStore(chdb_dir(settings))


def open_spool(settings: Settings) -> Spool:
    spool = Spool(
        spool_dir(settings),
        settings.ingest_spool_segment_bytes,
        settings.ingest_spool_retention_s,
    )
    # Read at scrape time, so the figures are never stale.
    limit = settings.ingest_spool_max_bytes
    metrics.SPOOL_UNREPLAYED_BYTES.set_function(spool.unreplayed_bytes)
    metrics.SPOOL_LIMIT_BYTES.set(limit)
    metrics.SPOOL_FULL_RATIO.set_function(lambda: spool.unreplayed_bytes() / limit if limit else 0)
    metrics.SPOOL_DISK_FREE_BYTES.set_function(lambda: shutil.disk_usage(spool.directory).free)
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


# Messages received per event-loop callback at most, so a flood cannot starve the loop.
RECEIVE_BURST = 1_000


async def receive_batches(router: zmq.asyncio.Socket, committer: GroupCommitter) -> None:
    """Hand every batch to the committer as it arrives, and send the acks, until cancelled."""
    receiver = BatchReceiver(router, committer)
    loop = asyncio.get_running_loop()
    loop.add_reader(receiver.fd, receiver.drain)
    try:
        receiver.drain()
        await loop.create_future()
    finally:
        loop.remove_reader(receiver.fd)


class BatchReceiver:
    """The ROUTER read and written directly, from the event loop's reader callback.

    pyzmq's asyncio socket costs a future, its callbacks and an event check per message; here
    a readable ROUTER is drained with non-blocking receives, every batch of the drain joins the
    same spool append (ingest_service/group_commit.py), and the acks of one turn leave
    together, one message per gateway. ZeroMQ's descriptor is edge-triggered: it signals only
    when the socket's state changes, and a send may consume that signal, so after every send
    the socket is drained again.
    """

    def __init__(self, router: zmq.asyncio.Socket, committer: GroupCommitter) -> None:
        # The same ZeroMQ socket, without the asyncio wrapper's futures; the wrapper is never
        # used for receiving or sending, so the two never compete for events.
        self.socket = zmq.Socket.shadow(router.underlying)
        self.fd = self.socket.getsockopt(zmq.FD)
        self.committer = committer
        self.acks: dict[bytes, list[bytes]] = {}

    def drain(self) -> None:
        for _ in range(RECEIVE_BURST):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received(frames)
        # More is waiting: go on after the loop's other work.
        asyncio.get_running_loop().call_soon(self.drain)

    def received(self, frames: list[bytes]) -> None:
        if len(frames) < 3 or len(frames) % 2 == 0:
            self.reply_bad_framing(frames)
            return
        peer = frames[0]
        for index in range(1, len(frames), 2):
            self.committer.submit(frames[index + 1], self.sender(peer, frames[index]))

    def sender(self, peer: bytes, correlation_id: bytes) -> Reply:
        """Queue one ack; a group's acks (settled in one turn) go to each peer in one message."""

        def send_ack(ack: logs_pb2.LogAck) -> None:
            if not self.acks:
                asyncio.get_running_loop().call_soon(self.flush)
            self.acks.setdefault(peer, []).extend((correlation_id, ack.SerializeToString()))

        return send_ack

    def flush(self) -> None:
        acks, self.acks = self.acks, {}
        for peer, frames in acks.items():
            self.send(peer, frames)
        self.drain()

    def send(self, peer: bytes, frames: list[bytes]) -> None:
        try:
            self.socket.send_multipart([peer, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            # The gateway is gone or not reading: it answers osquery itself on timeout.
            log.warning("dropped %d acks for a gateway: %s", len(frames) // 2, exc)

    def reply_bad_framing(self, frames: list[bytes]) -> None:
        log.warning("message with %d frames, expected an odd number of at least 3", len(frames))
        correlation_id = frames[1] if len(frames) > 3 else b""
        error = (
            f"expected [identity, correlation id, LogBatch, ...], got {len(frames)} frames; "
            "send [correlation id, LogBatch] pairs from a DEALER"
        )
        ack = logs_pb2.LogAck(ok=False, error=error)
        # Called while draining, which goes on receiving after it.
        self.send(frames[0], [correlation_id, ack.SerializeToString()])
