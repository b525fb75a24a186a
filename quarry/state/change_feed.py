"""Fan-out of change events to gRPC watch streams.

Services push every state change (a node enrolled, a config version, a live query
opened) to a ChangeFeed; each gRPC server-streaming Watch call subscribes, sends its
snapshot, then relays what the feed delivers. Subscribing *before* reading the
snapshot means no change can fall between the two; events must therefore be
idempotent for the receiver (an upsert seen twice is harmless). `watch` is that
stream, written once for every service's Watch RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

# A watcher that falls this far behind is cut off; it reconnects and re-snapshots.
MAX_BACKLOG = 100_000


class SubscriberTooSlow(Exception):
    """The subscriber's backlog overflowed; it must re-subscribe and re-snapshot."""


class ChangeFeed(Generic[T]):
    """Broadcasts events to every current subscriber, in publication order."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[T | _Signal]] = set()
        self._closed = False

    def publish(self, event: T) -> None:
        for queue in list(self._queues):
            if queue.qsize() >= MAX_BACKLOG:
                self._queues.discard(queue)
                queue.put_nowait(_Signal.TOO_SLOW)
            else:
                queue.put_nowait(event)

    def close(self) -> None:
        """End every subscription (and refuse new ones): watch streams finish cleanly."""
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(_Signal.CLOSED)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    @contextmanager
    def subscribe(self) -> AsyncIterator[T]:  # type: ignore[misc]
        """`with feed.subscribe() as events:` then `async for e in events`."""
        queue: asyncio.Queue[T | _Signal] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(_Signal.CLOSED)
        self._queues.add(queue)
        try:
            yield _drain(queue)
        finally:
            self._queues.discard(queue)


class OpenStreams(Protocol):
    """A gauge of the open watch streams (prometheus_client's Gauge)."""

    def track_inprogress(self) -> contextlib.AbstractContextManager[object]: ...


async def watch(
    feed: ChangeFeed[T],
    snapshot: Callable[[], Iterable[T]],
    open_streams: OpenStreams | None = None,
) -> AsyncIterator[T]:
    """A Watch RPC's messages: every event of snapshot(), then each change the feed
    delivers, until the feed closes (or the caller goes away).

    It subscribes before calling snapshot(), so no change can fall between the two.
    open_streams counts the stream as open for as long as it lasts."""
    counted = open_streams.track_inprogress() if open_streams else contextlib.nullcontext()
    with counted, feed.subscribe() as live:
        for event in snapshot():
            yield event
        async for event in live:
            yield event


class _Signal(enum.Enum):
    TOO_SLOW = "too slow"
    CLOSED = "closed"


async def _drain(queue: asyncio.Queue[T | _Signal]) -> AsyncIterator[T]:
    while True:
        event = await queue.get()
        if event is _Signal.CLOSED:
            return
        if event is _Signal.TOO_SLOW:
            raise SubscriberTooSlow("watch stream fell behind; re-subscribe")
        yield event
