"""When each host is due for each scheduled query group, from memory (ADR 0019).

A group with cadence I is due for a node once per period of I seconds, at a moment offset
from the period's start by a hash of the group and node id: the fleet's answers spread
evenly over the period instead of arriving at once. The period a due moment opens is its
*slot*; the queries go out named with it (osquery_config.host_queries.WireName).

The gateway keeps, per node, the last slot of each group it asked or saw answered, and
nothing else: no campaign rows, no state in a service. The first time a gateway sees a
node (after its start, a replica's failover, or the node's enrollment), the node's current
slot counts as done: an earlier run or another replica may have asked it, and a gateway
that just started must not ask its whole fleet at once. The fleet is then asked at its own
due moments over the following period, and the first inventory of a new fleet is spread
the same way. A host is asked once per slot: an answer with an error, or none at all,
waits for the next slot (no retry loop).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable

from gateway import metrics
from osquery_config.host_queries import QueryGroup, WireName
from osquery_config.targeting import platform_family


class HostQuerySchedule:
    """The due scheduled queries of each node, and the memory of what was asked."""

    def __init__(
        self, groups: tuple[QueryGroup, ...], clock: Callable[[], float] = time.time
    ) -> None:
        self.groups = groups
        self.group_names = frozenset(group.name for group in groups)
        self._clock = clock
        # node id -> (the last slot done per group, in `groups` order; the next due moment).
        self._done: dict[str, tuple[list[int], float]] = {}
        self._sql_by_family: dict[str, list[dict[str, str]]] = {}

    def offset(self, group: QueryGroup, node_id: str) -> float:
        """Where in each period this node's due moment falls: the same on every gateway."""
        digest = zlib.crc32(f"{group.name}:{node_id}".encode())
        return digest % (group.interval_s * 1000) / 1000.0

    def slot_at(self, group: QueryGroup, node_id: str, when: float) -> int:
        """The slot whose due moment is the latest at or before `when`."""
        return math.floor((when - self.offset(group, node_id)) / group.interval_s)

    def due_moment(self, group: QueryGroup, node_id: str, slot: int) -> float:
        return slot * group.interval_s + self.offset(group, node_id)

    def due(self, node_id: str, platform: str) -> dict[str, str]:
        """Wire name -> SQL of every query due for this node now, marking them asked."""
        if not self.groups:
            return {}
        now = self._clock()
        memory = self._done.get(node_id)
        if memory is not None and now < memory[1]:
            return {}  # the hot path: nothing due before the memorised moment
        slots = memory[0] if memory is not None else self._first_slots(node_id, now)
        queries: dict[str, str] = {}
        family = platform_family(platform)
        for index, group in enumerate(self.groups):
            slot = self.slot_at(group, node_id, now)
            if slot <= slots[index]:
                continue
            slots[index] = slot
            sql = self._sql_for(index, family)
            for name, text in sql.items():
                queries[WireName(group.name, name, slot).text()] = text
            if sql:
                metrics.HOST_QUERIES_ASKED.labels(group.name).inc()
        self._done[node_id] = (slots, self._next_due(node_id, slots))
        return queries

    def answered(self, node_id: str, wire: WireName) -> None:
        """A write answered this slot (maybe asked by another replica): do not ask it again.

        A slot later than the current one was never asked: a node cannot opt out that way.
        """
        now = self._clock()
        for index, group in enumerate(self.groups):
            if group.name != wire.group or wire.slot > self.slot_at(group, node_id, now):
                continue
            memory = self._done.get(node_id)
            slots = memory[0] if memory else self._first_slots(node_id, now)
            slots[index] = max(slots[index], wire.slot)
            self._done[node_id] = (slots, self._next_due(node_id, slots))

    def _first_slots(self, node_id: str, now: float) -> list[int]:
        """The slots counted as done when this gateway first sees the node: the current ones."""
        return [self.slot_at(group, node_id, now) for group in self.groups]

    def _next_due(self, node_id: str, slots: list[int]) -> float:
        return min(
            self.due_moment(group, node_id, slots[index] + 1)
            for index, group in enumerate(self.groups)
        )

    def _sql_for(self, index: int, family: str) -> dict[str, str]:
        by_group = self._sql_by_family.get(family)
        if by_group is None:
            by_group = self._sql_by_family[family] = [g.sql_for(family) for g in self.groups]
        return by_group[index]
