"""Writes that check-ins cause, sent to the services in batches, not one call each.

Last-seen times and live-query deliveries are fire-and-forget: they are merged in
memory and flushed every `interval`. Live-query answers must be stored before
osquery is told its write succeeded, so `answer()` waits for the flush that carries
it; an answer also makes that flush happen within a few milliseconds, grouping the
answers that arrive together into one RecordActivity call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway import metrics
from protos.v1 import distributed_pb2, distributed_pb2_grpc, enroll_pb2, enroll_pb2_grpc

log = logging.getLogger(__name__)

ANSWER_GROUPING_S = 0.01
RPC_TIMEOUT_S = 10.0


class ActivityBatcher:
    def __init__(
        self,
        enroll: enroll_pb2_grpc.EnrollServiceStub,
        distributed: distributed_pb2_grpc.DistributedServiceStub,
        interval: float,
    ) -> None:
        self._enroll = enroll
        self._distributed = distributed
        self._interval = interval
        self._seen: dict[str, int] = {}
        # (campaign, node) -> (delivered at, host identifier)
        self._deliveries: dict[tuple[str, str], tuple[int, str]] = {}
        self._answers: list[distributed_pb2.Answer] = []
        self._answer_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()

    def seen(self, node_id: str) -> None:
        self._seen[node_id] = int(time.time())

    def delivered(self, campaign_id: str, node_id: str, host_identifier: str = "") -> None:
        self._deliveries.setdefault((campaign_id, node_id), (int(time.time()), host_identifier))

    async def answer(self, answers: list[distributed_pb2.Answer]) -> None:
        """Queue answers and return once they are stored (raises if they could not be)."""
        waiter = asyncio.get_running_loop().create_future()
        self._answers.extend(answers)
        self._answer_waiters.append(waiter)
        self._wake.set()
        await waiter

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                await asyncio.sleep(ANSWER_GROUPING_S)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        await asyncio.gather(self._flush_checkins(), self._flush_activity())

    async def _flush_checkins(self) -> None:
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        batch = enroll_pb2.CheckinBatch(
            checkins=[enroll_pb2.Checkin(node_id=n, seen_at=t) for n, t in seen.items()]
        )
        try:
            await self._enroll.RecordCheckins(batch, timeout=RPC_TIMEOUT_S)
            metrics.BATCHED_WRITES.labels("checkin").inc(len(seen))
        except Exception as exc:  # last-seen is best effort: keep the newest and retry
            log.warning("recording %d check-ins failed: %s", len(seen), exc)
            for node_id, t in seen.items():
                self._seen.setdefault(node_id, t)

    async def _flush_activity(self) -> None:
        if not self._deliveries and not self._answers:
            # A write that carried no answer (osquery sends `queries: {}`) waits for nothing.
            waiters, self._answer_waiters = self._answer_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        deliveries, self._deliveries = self._deliveries, {}
        answers, self._answers = self._answers, []
        waiters, self._answer_waiters = self._answer_waiters, []
        batch = distributed_pb2.ActivityBatch(
            deliveries=[
                distributed_pb2.Delivery(
                    campaign_id=c, node_id=n, delivered_at=t, host_identifier=h
                )
                for (c, n), (t, h) in deliveries.items()
            ],
            answers=answers,
        )
        try:
            await self._distributed.RecordActivity(batch, timeout=RPC_TIMEOUT_S)
        except Exception as exc:
            log.warning("recording live query activity failed: %s", exc)
            for key, delivery in deliveries.items():
                self._deliveries.setdefault(key, delivery)
            for waiter in waiters:  # osquery keeps its results and writes again
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        metrics.BATCHED_WRITES.labels("delivery").inc(len(deliveries))
        metrics.BATCHED_WRITES.labels("answer").inc(len(answers))
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
