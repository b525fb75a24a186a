"""quarry/runtime/group_commit.py alone: who joins which group, in what order, and failures."""

from __future__ import annotations

import asyncio

from quarry.runtime.group_commit import GroupCommit


class Recorder:
    """A write_group that records its groups and can be held open, or made to fail."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def write(self, items: list[int]) -> list[int]:
        self.groups.append(items)
        if len(self.groups) == 1:
            await self.release.wait()  # the first group stays in flight until released
        if self.fail_with is not None:
            raise self.fail_with
        return [item * 10 for item in items]


def test_callers_arriving_while_a_group_is_written_join_the_next_one() -> None:
    async def scenario() -> tuple[list[int], list[list[int]]]:
        recorder = Recorder()
        groups = GroupCommit(recorder.write, max_group=100)
        first = asyncio.create_task(groups.submit(1))
        while not recorder.groups:
            await asyncio.sleep(0)
        later = [asyncio.create_task(groups.submit(n)) for n in (2, 3)]
        many = asyncio.create_task(groups.submit_many([4, 5]))
        await asyncio.sleep(0)
        recorder.release.set()
        results = [await first] + [await task for task in later] + await many
        await groups.close()
        return results, recorder.groups

    results, written = asyncio.run(scenario())
    assert results == [10, 20, 30, 40, 50]
    assert written == [[1], [2, 3, 4, 5]]


def test_a_group_is_never_larger_than_max_group() -> None:
    async def scenario() -> list[list[int]]:
        recorder = Recorder()
        recorder.release.set()
        groups = GroupCommit(recorder.write, max_group=3)
        assert await groups.submit_many(list(range(7))) == [n * 10 for n in range(7)]
        await groups.close()
        return recorder.groups

    assert [len(group) for group in asyncio.run(scenario())] == [3, 3, 1]


def test_a_failed_group_fails_each_of_its_callers_and_the_next_group_still_runs() -> None:
    async def scenario() -> tuple[list[object], int]:
        recorder = Recorder()
        recorder.fail_with = RuntimeError("database gone")
        groups = GroupCommit(recorder.write)
        first = asyncio.create_task(groups.submit(1))
        while not recorder.groups:
            await asyncio.sleep(0)
        second = asyncio.create_task(groups.submit(2))
        await asyncio.sleep(0)
        recorder.release.set()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        recorder.fail_with = None
        after = await groups.submit(3)
        await groups.close()
        return list(outcomes), after

    outcomes, after = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) and str(o) == "database gone" for o in outcomes)
    assert after == 30
