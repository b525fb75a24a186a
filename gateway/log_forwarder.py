"""Sends log batches to the ingest service over ZeroMQ and waits for their acks.

One DEALER socket connects to every ingest replica's ROUTER; ZeroMQ spreads batches
over the replicas that are connected (IMMEDIATE: never queue for a peer that is
down). Each batch travels as [correlation id, LogBatch] and comes back as
[correlation id, LogAck]; many are in flight at once, and one receive loop resolves
the waiting requests. See docs/adr/0002-log-acknowledgement.md.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import zmq
import zmq.asyncio

from gateway import metrics
from protos.v1 import logs_pb2

log = logging.getLogger(__name__)


class LogForwarder:
    def __init__(self, endpoints: list[str], ack_timeout_s: float) -> None:
        self._endpoints = endpoints
        self._ack_timeout_s = ack_timeout_s
        self._ctx = zmq.asyncio.Context()
        self._socket = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 100_000)
        self._socket.setsockopt(zmq.RCVHWM, 100_000)
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[logs_pb2.LogAck]] = {}

    def connect(self) -> None:
        for endpoint in self._endpoints:
            self._socket.connect(endpoint)
        log.info("log batches go to %s", ", ".join(self._endpoints))

    async def send(self, batch: logs_pb2.LogBatch) -> logs_pb2.LogAck:
        """Deliver one batch; the ack says whether it is stored. Never raises."""
        corr = next(self._ids).to_bytes(8, "big")
        future = asyncio.get_running_loop().create_future()
        self._pending[corr] = future
        metrics.LOG_BATCHES_IN_FLIGHT.set(len(self._pending))
        started = time.perf_counter()
        try:
            await self._socket.send_multipart([corr, batch.SerializeToString()], flags=zmq.NOBLOCK)
            ack = await asyncio.wait_for(future, self._ack_timeout_s)
        except zmq.Again:
            ack = _failed(batch, "no ingest service is reachable")
        except TimeoutError:
            ack = _failed(batch, f"ingest did not confirm within {self._ack_timeout_s:g} s")
        finally:
            self._pending.pop(corr, None)
            metrics.LOG_BATCHES_IN_FLIGHT.set(len(self._pending))
        metrics.LOG_ACK_SECONDS.observe(time.perf_counter() - started)
        return ack

    async def run(self) -> None:
        """Receive acks for ever, waking the requests that wait for them."""
        while True:
            frames = await self._socket.recv_multipart()
            if len(frames) != 2:
                log.warning("ignoring a malformed ack of %d frames", len(frames))
                continue
            future = self._pending.get(frames[0])
            if future is not None and not future.done():
                ack = logs_pb2.LogAck()
                ack.ParseFromString(frames[1])
                future.set_result(ack)

    def close(self) -> None:
        self._socket.close(linger=0)
        self._ctx.term()


def _failed(batch: logs_pb2.LogBatch, error: str) -> logs_pb2.LogAck:
    return logs_pb2.LogAck(batch_id=batch.batch_id, ok=False, error=error)
