"""The POST-to-visible latency figures: percentiles and how a result is summarised.

The end-to-end measurement against a real cluster runs in test_bench_smoke.py; these check
the arithmetic it reports with, on known timings.
"""

from __future__ import annotations

from bench.visibility_latency import PostTiming, VisibilityResult, latency_summary_ms


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    latencies = [n / 1000 for n in range(1, 101)]  # 1 ms .. 100 ms
    assert latency_summary_ms(latencies) == {"p50_ms": 50.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert latency_summary_ms([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None}


def test_a_result_counts_only_posts_whose_rows_all_became_visible() -> None:
    result = VisibilityResult(rate_per_s=20, duration_s=1, lines_per_post=1024)
    result.posts = {
        1: PostTiming(sent_at=10.0, acked_at=10.02, visible_at=10.3),
        2: PostTiming(sent_at=10.05, acked_at=10.06, visible_at=None),  # rows still missing
        3: PostTiming(sent_at=10.1, problem="HTTP 500: boom"),
    }
    figures = result.as_dict()
    assert figures["posts_sent"] == 3
    assert figures["errors"] == 1
    assert figures["posts_visible"] == 1
    assert figures["rows_visible"] == 1024
    assert figures["visible"]["max_ms"] == 300.0
    assert figures["ack"]["p50_ms"] == 10.0
    assert figures["error_examples"] == ["HTTP 500: boom"]
