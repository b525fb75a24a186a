"""The gateway's schedule of host queries (gateway/host_queries.py, ADR 0019), on a fake
clock: due moments spread over the period, a restarted gateway does not ask its fleet at
once, each host is asked once per period whether it answers, fails or stays silent, and
the queries' wire names carry group, query and slot without colliding with campaign ids.
A unit test of one module: the schedule is pure memory, nothing to mock."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.host_queries import HostQuerySchedule
from osquery_config.host_queries import (
    HostQuery,
    QueryGroup,
    WireName,
    builtin_groups,
    is_host_query,
    parse_wire_name,
)

HOUR = 3600
T0 = 1_800_000_000.0  # a round-ish moment; nothing depends on its value
FLEET = [f"node-{i:05d}" for i in range(3000)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def vitals_only(interval_s: int = HOUR) -> tuple[QueryGroup, ...]:
    return builtin_groups(vitals_interval_s=interval_s, software_interval_s=0)


def asks_over(schedule: HostQuerySchedule, clock: Clock, until: float, step: float) -> Counter:
    """Every node reads every `step` seconds until `until`; (node, group, slot) -> reads
    that asked it, and asks per minute in `schedule.minutes`."""
    asked: Counter = Counter()
    minutes: Counter = Counter()
    while clock.now < until:
        for node_id in FLEET:
            wires = [parse_wire_name(name) for name in schedule.due(node_id, "ubuntu")]
            assert None not in wires
            for group, slot in {(wire.group, wire.slot) for wire in wires}:  # type: ignore[union-attr]
                asked[(node_id, group, slot)] += 1  # once per read, whatever its queries
                minutes[int(clock.now // 60)] += 1
        clock.now += step
    schedule.minutes = minutes  # type: ignore[attr-defined]
    return asked


def test_a_fresh_gateway_asks_nobody_at_once_then_everyone_once_per_period_spread_out() -> None:
    clock = Clock(T0)
    schedule = HostQuerySchedule(vitals_only(), clock)
    assert all(schedule.due(node_id, "ubuntu") == {} for node_id in FLEET)

    asked = asks_over(schedule, clock, T0 + 2 * HOUR + 1, step=60)
    # Each node exactly once per period: twice in two periods, never twice in one slot.
    per_node = Counter(node_id for node_id, _, _ in asked)
    assert set(per_node.values()) == {2}
    assert set(asked.values()) == {1}
    # Spread: 3000 hosts an hour is 50 a minute; no minute carries even twice that.
    minutes = schedule.minutes  # type: ignore[attr-defined]
    assert len(minutes) >= 115
    assert max(minutes.values()) < 100


def test_a_restarted_gateway_waits_for_each_hosts_own_due_moment() -> None:
    clock = Clock(T0)
    before = HostQuerySchedule(vitals_only(), clock)
    asks_over(before, clock, T0 + HOUR + 1234, step=60)
    restarted = HostQuerySchedule(vitals_only(), clock)  # memory lost
    first_reads = sum(len(restarted.due(node_id, "ubuntu")) for node_id in FLEET)
    assert first_reads == 0
    asked = asks_over(restarted, clock, clock.now + HOUR + 1, step=60)
    assert len({node_id for node_id, _, _ in asked}) == len(FLEET)
    assert max(restarted.minutes.values()) < 100  # type: ignore[attr-defined]


def test_a_host_that_fails_or_never_answers_is_asked_again_only_next_period() -> None:
    clock = Clock(T0)
    schedule = HostQuerySchedule(vitals_only(), clock)
    node_id = "node-quiet"
    schedule.due(node_id, "ubuntu")
    asks = []
    for _ in range(2 * HOUR // 5):  # osquery's accelerated pace: a read every 5 s
        due = schedule.due(node_id, "ubuntu")
        if due:
            asks.append(clock.now)
            # Half the time it answers with an error, otherwise with nothing at all.
            if len(asks) % 2:
                for name in due:
                    schedule.answered(node_id, parse_wire_name(name))  # type: ignore[arg-type]
        clock.now += 5
    assert len(asks) == 2
    assert asks[1] - asks[0] == pytest.approx(HOUR, abs=5)


def test_an_answer_seen_by_another_replica_counts_for_its_slot() -> None:
    clock = Clock(T0)
    group = vitals_only()
    asking, other = HostQuerySchedule(group, clock), HostQuerySchedule(group, clock)
    node_id = "node-roaming"
    asking.due(node_id, "ubuntu")
    other.due(node_id, "ubuntu")
    while not (due := asking.due(node_id, "ubuntu")):
        clock.now += 10
    for name in due:
        other.answered(node_id, parse_wire_name(name))  # type: ignore[arg-type]
    assert other.due(node_id, "ubuntu") == {}


def test_an_answer_for_a_slot_never_asked_does_not_silence_a_host() -> None:
    clock = Clock(T0)
    schedule = HostQuerySchedule(vitals_only(), clock)
    node_id = "node-liar"
    schedule.due(node_id, "ubuntu")
    future = schedule.slot_at(schedule.groups[0], node_id, T0) + 1000
    schedule.answered(node_id, WireName("vitals", "os_version", future))
    clock.now += HOUR
    assert schedule.due(node_id, "ubuntu")


def test_each_host_gets_the_sql_of_its_platform() -> None:
    clock = Clock(T0)
    schedule = HostQuerySchedule(builtin_groups(HOUR, 24 * HOUR), clock)

    def first_queries(node_id: str, platform: str) -> dict[str, str]:
        schedule.due(node_id, platform)
        clock.now += 24 * HOUR
        return {
            parse_wire_name(name).path: sql for name, sql in schedule.due(node_id, platform).items()
        }  # type: ignore[union-attr]

    linux = first_queries("node-linux", "ubuntu")
    windows = first_queries("node-windows", "windows")
    darwin = first_queries("node-mac", "darwin")
    assert "software/deb_packages" in linux and "software/programs" not in linux
    assert "software/programs" in windows and "software/rpm_packages" not in windows
    assert {"software/apps", "software/homebrew_packages"} <= set(darwin)
    assert "FROM memory_info" in linux["vitals/memory"]
    assert "FROM virtual_memory_info" in darwin["vitals/memory"]
    assert "logical_drives" in windows["vitals/disk_space"]
    assert {path.split("/")[0] for path in linux} == {"vitals", "software"}


def test_wire_names_carry_group_query_and_slot_and_are_never_campaign_ids() -> None:
    wire = WireName("vitals", "os_version", 500_123)
    assert wire.text() == "quarry__vitals__os_version__500123"
    assert parse_wire_name(wire.text()) == wire
    assert not is_host_query("q_" + "0" * 32)  # campaign ids (distributed_service/launch.py)
    for bad in ("quarry__vitals__os_version", "quarry__vitals__os_version__x", "quarry__V__a__1"):
        assert parse_wire_name(bad) is None
    with pytest.raises(ValueError, match="lower-case"):
        QueryGroup("Bad Name", HOUR, (HostQuery("q", {"linux": "SELECT 1"}),))
    assert builtin_groups(0, 0) == ()
