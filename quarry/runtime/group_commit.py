"""Group commit: callers that arrive while one group is being written join the next.

    groups = GroupCommit(write_group, max_group=500)
    result = await groups.submit(item)          # one caller, one item
    results = await groups.submit_many(items)   # a caller with many (kept together)

`write_group(items)` gets everything queued since the previous group started (up to
`max_group`, in arrival order) and returns one result per item, in order; it runs one
group at a time. Under load a group is as large as what arrived during the previous
one, so the cost of a transaction and its fsync is shared by many callers; alone, a
caller waits for nothing but its own write. If write_group raises, every caller of that
group gets the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write_group: Callable[[list[T]], Awaitable[list[R]]],
        max_group: int = 500,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        self._write_group = write_group
        self._max_group = max_group
        self._on_group = on_group
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Items queued for a group that has not started yet."""
        return len(self._queue)

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Queue items (they stay in order, possibly split over consecutive groups)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futures, strict=True))
        self._start(loop)
        assert self._wake is not None
        self._wake.set()
        return list(await asyncio.gather(*futures))

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            # Calls already received but not yet queued get one turn of the loop to join.
            await asyncio.sleep(0)
            group, self._queue = self._queue[: self._max_group], self._queue[self._max_group :]
            if not self._queue:
                self._wake.clear()
            if group:
                await self._write(group)

    async def _write(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        if self._on_group is not None:
            self._on_group(len(group))
        try:
            results = await self._write_group([item for item, _ in group])
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)
