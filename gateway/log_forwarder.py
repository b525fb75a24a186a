"""Sends log batches to the ingest replicas over ZeroMQ and waits for their acks.

Each ingest replica has its own spool and its own memory of each node's recent lines, so a
line re-sent by osquery (alone or merged into a later batch) must reach the replica that
stored it the first time, or it would be stored twice. The gateway therefore keeps one DEALER
socket per replica and sends each batch to its node's first choice by rendezvous hashing of
the node id over the configured replicas: every gateway picks the same replica for the same
node, and adding or removing a replica moves only that replica's share
(docs/adr/0012-line-level-exactly-once.md). When the first choice is unreachable
(IMMEDIATE: ZeroMQ refuses to queue for a peer that is not connected) the batch goes to
the next replica in that batch's order, marked `failover` so that replica checks
ClickHouse before inserting it (docs/adr/0005-ingest-replicas.md).

With QUARRY_ZMQ_CURVE on each DEALER is a CURVE client (quarry/encryption/zmq_curve.py): a batch is
encrypted, and a gateway whose key ingest does not accept never completes the handshake,
so IMMEDIATE refuses the batch and osquery gets an error answer, as for a replica that is
down. ZeroMQ never retries a handshake that ingest refused, so a monitor on each DEALER
logs the refusal and reconnects after HANDSHAKE_RETRY_S: a key authorized later (rotation)
starts working without a gateway restart.

A batch travels as a [correlation id, LogBatch] pair and comes back as [correlation id,
LogAck]; the batches ready in one event-loop turn go to a replica in one message, and its acks
come back likewise (each ZeroMQ message costs thread wake-ups in both processes, far more than
its bytes). Many are in flight at once on each socket and one receive loop per socket
resolves the waiting requests (docs/adr/0002-log-acknowledgement.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from gateway import metrics
from protos.v1 import logs_pb2
from quarry.encryption.zmq_curve import CurveKeys, secure_dealer

log = logging.getLogger(__name__)

HANDSHAKE_RETRY_S = 5.0
MONITORED_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class LogForwarder:
    def __init__(
        self, endpoints: list[str], ack_timeout_s: float, curve: CurveKeys | None = None
    ) -> None:
        self._endpoints = endpoints
        self._ack_timeout_s = ack_timeout_s
        self._curve = curve
        self._ctx = zmq.asyncio.Context()
        self._sockets = {endpoint: self._dealer() for endpoint in endpoints}
        # Watched from before connect(): a refusal can come within the first milliseconds.
        self._monitors = {
            endpoint: socket.get_monitor_socket(MONITORED_EVENTS)
            for endpoint, socket in self._sockets.items()
            if curve is not None
        }
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[logs_pb2.LogAck]] = {}
        # The replica each pending batch went to, for the metrics' replica label.
        self._sent_to: dict[bytes, str] = {}
        for endpoint in endpoints:
            metrics.count_acks_from(replica_label(endpoint))
        # Batches to send at the end of this event-loop turn: each with its replicas to try.
        self._outbox: list[Outgoing] = []

    def _dealer(self) -> zmq.asyncio.Socket:
        socket = self._ctx.socket(zmq.DEALER)
        if self._curve is not None:
            secure_dealer(socket, self._curve)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        return socket

    def connect(self) -> None:
        for endpoint, socket in self._sockets.items():
            socket.connect(endpoint)
        log.info("log batches go to %s", ", ".join(self._endpoints))

    async def send(self, batch: logs_pb2.LogBatch) -> logs_pb2.LogAck:
        """Deliver one batch; the ack says whether it is stored. Never raises."""
        corr = next(self._ids).to_bytes(8, "big")
        future = asyncio.get_running_loop().create_future()
        self._pending[corr] = future
        metrics.LOG_BATCHES_IN_FLIGHT.set(len(self._pending))
        started = time.perf_counter()
        # Past this ingest drops the batch unstored: nobody waits for its ack any more.
        batch.answer_by_ms = int((time.time() + self._ack_timeout_s) * 1000)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(Outgoing(corr, batch, replica_order(batch.node_id, self._endpoints)))
        try:
            ack = await asyncio.wait_for(future, self._ack_timeout_s)
            result = "unreachable" if ack.error == UNREACHABLE else ("ok" if ack.ok else "error")
        except TimeoutError:
            result = "timeout"
            ack = _failed(batch, f"ingest did not confirm within {self._ack_timeout_s:g} s")
        finally:
            self._pending.pop(corr, None)
            metrics.LOG_BATCHES_IN_FLIGHT.set(len(self._pending))
        replica = self._sent_to.pop(corr, metrics.NO_REPLICA)
        metrics.LOG_ACKS.labels(result, replica).inc()
        metrics.LOG_ACK_SECONDS.labels(replica).observe(time.perf_counter() - started)
        return ack

    def _flush(self) -> None:
        """Send this turn's batches, one message per replica; a replica that refuses (not
        connected: IMMEDIATE) passes its batches on to each one's next choice, marked."""
        outgoing, self._outbox = self._outbox, []
        while outgoing:
            by_endpoint: dict[str, list[Outgoing]] = {}
            for item in outgoing:
                by_endpoint.setdefault(item.replicas[item.attempt], []).append(item)
            outgoing = []
            for endpoint, items in by_endpoint.items():
                frames = [f for item in items for f in (item.corr, item.frame())]
                # NOBLOCK: resolved at once, with zmq.Again when the replica is not connected.
                sent = self._sockets[endpoint].send_multipart(frames, flags=zmq.NOBLOCK)
                error = sent.exception() if sent.done() else None  # type: ignore[attr-defined]
                if error is not None:
                    if not isinstance(error, zmq.Again):
                        log.warning("sending to ingest %s failed: %s", endpoint, error)
                    outgoing.extend(self._fail_over(items))
                    continue
                replica = replica_label(endpoint)
                for item in items:
                    self._sent_to[item.corr] = replica
                metrics.LOG_BATCHES_SENT.inc(len(items))
                metrics.LOG_BATCH_FAILOVERS.inc(sum(1 for item in items if item.attempt))

    def _fail_over(self, items: list[Outgoing]) -> list[Outgoing]:
        """The items with a next replica to try; the others are answered unreachable."""
        remaining = []
        for item in items:
            item.attempt += 1
            if item.attempt < len(item.replicas):
                item.batch.failover = True
                remaining.append(item)
                continue
            future = self._pending.get(item.corr)
            if future is not None and not future.done():
                future.set_result(_failed(item.batch, UNREACHABLE))
        return remaining

    async def run(self) -> None:
        """Receive acks from every replica for ever, waking the requests that wait for them."""
        receivers = [self._receive(socket) for socket in self._sockets.values()]
        retries = [self._retry_refused(e, monitor) for e, monitor in self._monitors.items()]
        await asyncio.gather(*receivers, *retries)

    async def _retry_refused(self, endpoint: str, monitor: zmq.asyncio.Socket) -> None:
        """Reconnect HANDSHAKE_RETRY_S after ingest refuses the handshake (ZeroMQ would not)."""
        socket = self._sockets[endpoint]
        refused = False
        while True:
            event = (await recv_monitor_message(monitor))["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if refused:
                    log.info("ingest %s accepted this gateway's CURVE key", endpoint)
                refused = False
                continue
            if not refused:
                log.error(
                    "ingest %s refused the CURVE handshake (%s): is this gateway's key in its "
                    "authorized_clients, and server.key its key? Retrying every %g s",
                    endpoint,
                    zmq.Event(event).name,
                    HANDSHAKE_RETRY_S,
                )
            refused = True
            await asyncio.sleep(HANDSHAKE_RETRY_S)
            socket.disconnect(endpoint)
            socket.connect(endpoint)

    async def _receive(self, socket: zmq.asyncio.Socket) -> None:
        while True:
            frames = await socket.recv_multipart()
            if len(frames) % 2:
                log.warning("ignoring a malformed ack message of %d frames", len(frames))
                continue
            for index in range(0, len(frames), 2):
                future = self._pending.get(frames[index])
                if future is not None and not future.done():
                    future.set_result(logs_pb2.LogAck.FromString(frames[index + 1]))

    def close(self) -> None:
        for monitor in self._monitors.values():
            monitor.close(linger=0)
        for socket in self._sockets.values():
            socket.close(linger=0)
        self._ctx.term()


UNREACHABLE = "no ingest service is reachable"


@dataclass
class Outgoing:
    """A batch on its way: its correlation id, and the replicas to try, in order."""

    corr: bytes
    batch: logs_pb2.LogBatch
    replicas: list[str]
    attempt: int = 0

    def frame(self) -> bytes:
        return self.batch.SerializeToString()


def replica_order(node_id: str, endpoints: list[str]) -> list[str]:
    """The replicas to try for this node's batches, best first (rendezvous hashing)."""
    if len(endpoints) == 1:
        return endpoints
    return sorted(
        endpoints,
        key=lambda endpoint: hashlib.blake2b(f"{endpoint}\0{node_id}".encode()).digest(),
        reverse=True,
    )


def replica_label(endpoint: str) -> str:
    """An ingest replica as the metrics name it: its host:port, from QUARRY_INGEST_ZMQ_ADDRS
    (bounded: the configured replicas)."""
    return endpoint.removeprefix("tcp://")


def _failed(batch: logs_pb2.LogBatch, error: str) -> logs_pb2.LogAck:
    return logs_pb2.LogAck(batch_id=batch.batch_id, ok=False, error=error)
