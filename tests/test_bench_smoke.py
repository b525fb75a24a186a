"""`python -m bench --quick`: both standard workloads run and the report holds together.

A smoke test of the code, not a measurement: no figure is compared with a threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.__main__ import main
from bench.event_payloads import EVENT_LINES_PER_FLUSH, STATUS_LINES_PER_BATCH

QUICK_HOSTS = 12
SERVICES = {"gateway", "ingest", "enroll", "config", "distributed"}


def test_a_quick_run_of_both_workloads_writes_a_consistent_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--quick", "--out", str(out)]) == 0
    figures = json.loads((out / "report.json").read_text())

    assert set(figures["workloads"]) == {"fleet", "events"}
    for name, run in figures["workloads"].items():
        check_workload(name, run)
    check_fleet_workload(figures["workloads"]["fleet"])
    check_events_workload(figures["workloads"]["events"])
    check_optional_phases(figures["phases"])
    check_saturation(figures)
    markdown = (out / "report.md").read_text()
    assert "## Two workloads side by side" in markdown
    assert "| figure | fleet | events |" in markdown
    assert "| **hosts per core, whole stack** |" in markdown
    assert "| CPU µs per row: ingest |" in markdown
    assert "## Workload `events`" in markdown and "## Workload `fleet`" in markdown
    assert "| all its rows visible in ClickHouse |" in markdown
    assert "## Authentication on the hot path" in markdown and "node-cache hits" in markdown
    assert "## Enrollment storm: 20 new hosts" in markdown


def check_workload(name: str, run: dict[str, Any]) -> None:
    assert run["fleet"]["hosts_enrolled"] == QUICK_HOSTS, name
    assert run["rows_check"]["equal"] is True, (name, run["rows_check"])
    assert run["rows_check"]["found"]["results"] > 0, name
    assert run["rows_check"]["lines_unacknowledged"] == 0, name
    assert SERVICES | {"total"} <= set(run["costs"]["processes"]), name
    window = run["window"]
    assert window["all_requests"]["requests"] > 0, name
    assert window["all_requests"]["errors"] == 0, (name, window["all_requests"])
    assert window["endpoints"]["log"]["requests"] > 0, name
    assert window["rows_accepted"]["results"] > 0, name
    assert window["host_seconds"] > 0 and window["hosts_per_core"] > 0, name
    for process in SERVICES:
        figures = window["processes"][process]
        assert figures["cpu_s"] >= 0 and figures["cpu_us_per_request"] is not None, name
        assert figures["cpu_us_per_row"] is not None, name
    assert window["processes"]["total"]["cpu_s"] > 0, name
    inserts = window["clickhouse_inserts"]
    assert inserts["inserts"] > 0 and inserts["rows_inserted"] > 0, (name, inserts)


def check_fleet_workload(run: dict[str, Any]) -> None:
    assert run["fleet"]["config"]["payload"] == "packs"
    assert run["fleet"]["live_queries"][0]["seconds_to"]["p100"] is not None
    assert "post_to_visible" not in run


def check_events_workload(run: dict[str, Any]) -> None:
    fleet = run["fleet"]
    assert fleet["config"]["payload"] == "events" and fleet["config"]["gzip"] is True
    assert fleet["live_queries"] == []
    # Every log POST was accepted, so each result POST held one flush: 20 event lines.
    assert fleet["rows_accepted"]["results"] % EVENT_LINES_PER_FLUSH == 0
    assert fleet["rows_accepted"]["status"] % STATUS_LINES_PER_BATCH == 0
    assert fleet["rows_accepted"]["status"] > 0  # every host sends status every 6 flushes
    # Once enrolled, a host holds config, logger and distributed connections: 3.
    assert run["window"]["connections_per_host"] == 3.0
    latency = run["post_to_visible"]
    assert latency["lines_per_post"] == EVENT_LINES_PER_FLUSH
    assert latency["posts_sent"] == 5 and latency["errors"] == 0
    assert latency["posts_visible"] == 5  # every POST's 20 rows were counted in ClickHouse
    assert 0 < latency["visible"]["p50_ms"] <= latency["visible"]["p99_ms"]


def check_optional_phases(phases: dict[str, Any]) -> None:
    idle = phases["idle_connections"]
    assert idle["connections"] == 20 and idle["kb_per_connection"] > 0
    storm = phases["enrollment_storm"]
    assert storm["enrollments"] == storm["new_keys_working"] == 20
    assert storm["enrolled_hosts_ready"] == 4 and storm["checkins_storm"]["errors"] == 0


def check_saturation(figures: dict[str, Any]) -> None:
    for path in ("distributed_read", "config", "log"):
        assert figures["saturation"]["quarry"][path]["requests"] > 0
        assert figures["saturation"]["quarry"][path]["errors"] == 0
    full = figures["saturation"]["quarry"]["log_full_batches"]
    assert full["errors"] == 0
    assert full["rows_visible"] >= full["rows_acked_in_window"] > 0  # every acked row landed
    latency = figures["saturation"]["quarry"]["log_post_to_visible"]
    assert latency["posts_sent"] == 5 and latency["errors"] == 0
    assert latency["posts_visible"] == 5  # every POST's 1024 rows were counted in ClickHouse
    assert latency["rows_visible"] == 5 * 1024
    assert latency["polls"] > 0 and latency["poll_round_trip_ms"] > 0
    for phase in ("ack", "visible"):
        figure = latency[phase]
        assert 0 < figure["p50_ms"] <= figure["p99_ms"] <= figure["max_ms"]
    authentication = figures["saturation"]["authentication"]
    for path in ("distributed_read", "config"):
        compared = authentication[path]
        for gateway in ("authenticated", "skipped"):
            assert compared[gateway]["requests"] > 0, compared
            assert compared[gateway]["errors"] == 0, compared
            assert compared[gateway]["server_cpu_s"] > 0
        assert compared["ratio"] > 0
        cache = compared["node_cache"]
        # Every request the real gateway answered was authenticated from memory.
        assert cache["requests_answered"] >= compared["authenticated"]["requests"]
        assert cache["hits"] == cache["requests_answered"], cache
        assert cache["enroll_service_calls"] == 0, cache
    assert figures["saturation"]["bare_https"]["distributed_read"]["requests"] > 0
    assert figures["saturation"]["storage"]["rows_per_s"] > 0
    assert all(value is not None for value in figures["ratios"].values())
