"""`python -m bench` at tiny scale: the whole benchmark runs and its report holds together.

A smoke test of the code, not a measurement: no figure is compared with a threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_a_tiny_standard_run_writes_a_consistent_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    exit_code = main(
        [
            "--hosts", "12", "--duration", "8", "--start-period", "2",
            "--config-interval", "4", "--log-interval", "2", "--distributed-interval", "2",
            "--connections", "2", "--log-connections", "4", "--saturation-seconds", "0.5",
            "--latency-rate", "5", "--latency-seconds", "1",
            "--storm-new-hosts", "20", "--storm-enrolled-hosts", "4",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert exit_code == 0
    figures = json.loads((out / "report.json").read_text())
    assert figures["fleet"]["hosts_enrolled"] == 12
    assert figures["rows_check"]["equal"] is True
    assert figures["rows_check"]["found"]["results"] > 0
    assert figures["fleet"]["live_queries"][0]["seconds_to"]["p100"] is not None
    assert set(figures["costs"]["processes"]) >= {"gateway", "ingest", "enroll", "total"}
    assert figures["costs"]["server_cpu_s"] > 0
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
    storm = figures["enrollment_storm"]
    assert storm["enrollments"] == storm["new_keys_working"] == 20
    assert storm["enrolled_hosts_ready"] == 4 and storm["checkins_storm"]["errors"] == 0
    markdown = (out / "report.md").read_text()
    assert "hosts per core" in markdown and "| distributed read |" in markdown
    assert "| all its rows visible in ClickHouse |" in markdown
    assert "## Authentication on the hot path" in markdown and "node-cache hits" in markdown
    assert "## Enrollment storm: 20 new hosts" in markdown
