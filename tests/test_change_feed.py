"""quarry/state/change_feed.py alone: a Watch stream's snapshot, then its live changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Gauge

from quarry.state.change_feed import ChangeFeed, watch

T = TypeVar("T")


async def next_of(stream: AsyncIterator[T]) -> T:
    """The stream's next message; a lost one fails the test instead of hanging it."""
    return await asyncio.wait_for(anext(stream), 5.0)


def test_a_change_made_while_the_snapshot_is_read_follows_it() -> None:
    async def scenario() -> list[str]:
        feed: ChangeFeed[str] = ChangeFeed()

        def snapshot() -> Iterator[str]:
            yield "snapshot a"
            # A write committing between two snapshot rows: it must not be lost.
            feed.publish("changed during the snapshot")
            yield "snapshot b"

        stream = watch(feed, snapshot)
        received = [await next_of(stream) for _ in range(3)]
        feed.publish("changed after")
        received.append(await next_of(stream))
        await stream.aclose()
        return received

    assert asyncio.run(scenario()) == [
        "snapshot a",
        "snapshot b",
        "changed during the snapshot",
        "changed after",
    ]


def test_the_stream_is_counted_while_open_and_ends_when_the_feed_closes() -> None:
    registry = CollectorRegistry()
    open_streams = Gauge("test_watch_streams", "Open test streams.", registry=registry)

    async def scenario() -> tuple[float, list[str], float, int]:
        feed: ChangeFeed[str] = ChangeFeed()
        stream = watch(feed, lambda: ["snapshot"], open_streams)
        first = await next_of(stream)
        while_open = registry.get_sample_value("test_watch_streams")
        feed.publish("live")
        feed.close()
        rest = [event async for event in stream]
        return (
            while_open,
            [first, *rest],
            registry.get_sample_value("test_watch_streams"),
            (feed.subscribers),
        )

    while_open, events, after, subscribers = asyncio.run(scenario())
    assert (while_open, events, after, subscribers) == (1.0, ["snapshot", "live"], 0.0, 0)


def test_a_client_going_away_unsubscribes_and_is_no_longer_counted() -> None:
    registry = CollectorRegistry()
    open_streams = Gauge("test_watch_streams", "Open test streams.", registry=registry)

    async def scenario() -> tuple[int, int, float]:
        feed: ChangeFeed[str] = ChangeFeed()
        stream = watch(feed, lambda: ["snapshot"], open_streams)
        await next_of(stream)
        subscribed = feed.subscribers
        await stream.aclose()  # what gRPC does when the caller cancels
        return subscribed, feed.subscribers, registry.get_sample_value("test_watch_streams")

    assert asyncio.run(scenario()) == (1, 0, 0.0)
