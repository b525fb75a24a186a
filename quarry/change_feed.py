"""Fan-out of change events to gRPC watch streams.

Services push every state change (a node enrolled, a config version, a live query
opened) to a ChangeFeed; each gRPC server-streaming Watch call subscribes, sends its
snapshot, then relays what the feed delivers. Subscribing *before* reading the
snapshot means no change can fall between the two; events must therefore be
idempotent for the receiver (an upsert seen twice is harmless).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")

# A watcher that falls this far behind is cut off; it reconnects and re-snapshots.
MAX_BACKLOG = 100_000


class SubscriberTooSlow(Exception):
    """The subscriber's backlog overflowed; it must re-subscribe and re-snapshot."""


class ChangeFeed(Generic[T]):
    """Broadcasts events to every current subscriber, in publication order."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[T | None]] = set()

    def publish(self, event: T) -> None:
        for queue in list(self._queues):
            if queue.qsize() >= MAX_BACKLOG:
                self._queues.discard(queue)
                queue.put_nowait(None)  # tells the subscriber it was dropped
            else:
                queue.put_nowait(event)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    @contextmanager
    def subscribe(self) -> AsyncIterator[T]:  # type: ignore[misc]
        """`with feed.subscribe() as events:` then `async for e in events`."""
        queue: asyncio.Queue[T | None] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield _drain(queue)
        finally:
            self._queues.discard(queue)


async def _drain(queue: asyncio.Queue[T | None]) -> AsyncIterator[T]:
    while True:
        event = await queue.get()
        if event is None:
            raise SubscriberTooSlow("watch stream fell behind; re-subscribe")
        yield event
