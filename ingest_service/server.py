"""The ingest process: ZeroMQ ROUTER for log batches, LogStore gRPC, group commit to ClickHouse.

Frames on the ROUTER (the contract with the gateway's DEALER):
receive `[peer identity, correlation id, LogBatch]`, answer `[peer identity, correlation id,
LogAck]`. Many batches from one peer are in flight at once; acks go out as their groups are
stored, not in arrival order, so the gateway matches them by correlation id.
"""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio

from ingest_service.group_commit import GroupCommitter, Reply
from ingest_service.log_store import LogStore, open_log_store
from ingest_service.service import LogStoreService
from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.grpc_runtime import serve_grpc
from quarry.metrics_endpoint import start_metrics_endpoint
from quarry.settings import Settings
from quarry.shutdown import until_signalled

log = logging.getLogger(__name__)

# Deep queues: a gateway pipelines thousands of batches and must not be dropped for it.
HIGH_WATER_MARK = 100_000
# On shutdown, give the last acks this long to leave.
LINGER_MS = 2_000
GRPC_STOP_GRACE_S = 2.0


def main(settings: Settings) -> None:
    asyncio.run(serve(settings))


async def serve(settings: Settings) -> None:
    start_metrics_endpoint(settings, "ingest")
    store = open_log_store(settings)
    committer = GroupCommitter(store, settings.ingest_flush_rows, settings.ingest_flush_interval_s)
    committer.schema_ready = await create_schema(store)

    context = zmq.asyncio.Context()
    endpoint = f"tcp://{settings.bind_host}:{settings.ingest_zmq_port}"
    router = bind_router(context, endpoint)
    grpc_server = await serve_grpc(
        f"{settings.bind_host}:{settings.ingest_port}",
        lambda server: logs_pb2_grpc.add_LogStoreServicer_to_server(LogStoreService(store), server),
        "ingest",
    )

    writer = asyncio.create_task(committer.run())
    receiver = asyncio.create_task(receive_batches(router, committer))
    log.info("ingest ready: ZeroMQ %s, store version %s", endpoint, await store_version(store))
    await until_signalled()

    log.info("stopping: flushing pending batches")
    receiver.cancel()
    committer.stop()
    await writer
    await grpc_server.stop(GRPC_STOP_GRACE_S)
    router.close(linger=LINGER_MS)
    context.term()
    store.close()


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


def bind_router(context: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
    router = context.socket(zmq.ROUTER)
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
    while True:
        frames = await router.recv_multipart()
        if len(frames) != 3:
            await reply_bad_framing(router, frames)
            continue
        peer, correlation_id, batch_frame = frames
        await committer.submit(batch_frame, ack_sender(router, peer, correlation_id))


def ack_sender(router: zmq.asyncio.Socket, peer: bytes, correlation_id: bytes) -> Reply:
    async def send_ack(ack: logs_pb2.LogAck) -> None:
        await router.send_multipart([peer, correlation_id, ack.SerializeToString()])

    return send_ack


async def reply_bad_framing(router: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    log.warning("message with %d frames, expected 3", len(frames))
    correlation_id = frames[1] if len(frames) > 3 else b""
    error = (
        f"expected 3 frames [identity, correlation id, LogBatch], got {len(frames)}; "
        "send [correlation id, LogBatch] from a DEALER"
    )
    ack = logs_pb2.LogAck(ok=False, error=error)
    await router.send_multipart([frames[0], correlation_id, ack.SerializeToString()])
