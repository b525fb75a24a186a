"""The benchmark's markdown report, rendered from its JSON figures."""

from __future__ import annotations

from typing import Any

ENDPOINT_COLUMNS = ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms")


def render(figures: dict[str, Any]) -> str:
    lines = ["# Quarry benchmark", ""]
    lines += _environment(figures["environment"], figures["settings"])
    if "sweep" in figures:
        lines += _sweep(figures["sweep"])
    else:
        lines += _fleet(figures)
        lines += _saturation(figures["saturation"], figures["ratios"])
        lines += _authentication(figures["saturation"].get("authentication"))
        lines += _post_to_visible(figures["saturation"]["quarry"].get("log_post_to_visible"))
    return "\n".join(lines) + "\n"


def _environment(env: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    store = settings.get("clickhouse_url") or "embedded chdb"
    return [
        f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gib']} GiB, "
        f"Linux {env['kernel']}, Python {env['python']}.",
        f"ClickHouse {env['clickhouse']} ({store}). {packages}.",
        f"Gateway workers: {settings['gateway_workers']}. Intervals: config "
        f"{settings['config_interval']:g} s, logs {settings['log_interval']:g} s, distributed "
        f"{settings['distributed_interval']:g} s; gzip {'on' if settings['gzip'] else 'off'}.",
        "",
    ]


def _fleet(run: dict[str, Any]) -> list[str]:
    fleet, costs, rows = run["fleet"], run["costs"], run["rows_check"]
    lines = [
        f"## Fleet: {fleet['config']['hosts']} simulated hosts for {fleet['wall_s']:.0f} s",
        "",
        f"Enrolled {fleet['hosts_enrolled']}; {fleet['host_seconds']:.0f} host-seconds.",
        "",
        _table(
            ("endpoint", *ENDPOINT_COLUMNS),
            [
                (name, *(stats[c] for c in ENDPOINT_COLUMNS))
                for name, stats in fleet["endpoints"].items()
            ],
        ),
        "",
        f"Log rows accepted {rows['accepted']}, found in ClickHouse {rows['found']}: "
        f"{'equal' if rows['equal'] else 'NOT EQUAL'}.",
        "",
    ]
    for live in fleet["live_queries"]:
        reached = ", ".join(
            f"{k} {v} s" if v is not None else f"{k} never" for k, v in live["seconds_to"].items()
        )
        lines += [
            f"Live query launched at {live['launched_at_s']:.0f} s to "
            f"{live['hosts_enrolled_at_launch']} hosts: {reached}. {live['error']}",
            "",
        ]
    lines += [
        "## Cost (server side: every Quarry process and ClickHouse, from /proc)",
        "",
        f"- Server CPU: {costs['server_cpu_s']:.1f} s; "
        f"load generator: {costs['client_cpu_s']:.1f} s.",
        f"- CPU per simulated host-second: {costs['cpu_s_per_host_second'] * 1e6:.1f} µs, "
        f"so **{_number(costs['hosts_per_core'])} hosts per core** at these intervals.",
        "",
        *_steady(run.get("steady_costs")),
        _table(
            ("process", "cpu_s", "rss_max_mb", "rss per 10k hosts (MB)"),
            [
                (
                    name,
                    round(p["cpu_s"], 1),
                    round(p["rss_max_bytes"] / 2**20, 1),
                    round(costs["rss_per_10k_hosts_mb"][name], 1),
                )
                for name, p in costs["processes"].items()
            ],
        ),
        "",
    ]
    return lines


def _steady(steady: dict[str, Any] | None) -> list[str]:
    if not steady:
        return []
    return [
        f"- Steady state (from {steady['from_s']:.0f} s, after enrollment and first full result "
        f"sets; {steady['window_s']:.0f} s): {steady['cpu_s_per_host_second'] * 1e6:.1f} µs per "
        f"host-second, so **{_number(steady['hosts_per_core'])} hosts per core**.",
        "",
    ]


def _saturation(saturation: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    quarry, bare, storage = saturation["quarry"], saturation["bare_https"], saturation["storage"]
    rows = [
        (
            "distributed read",
            quarry["distributed_read"]["requests_per_s"],
            bare["distributed_read"]["requests_per_s"],
            ratios["distributed_read_vs_bare_https"],
        ),
        (
            "config",
            quarry["config"]["requests_per_s"],
            bare["config"]["requests_per_s"],
            ratios["config_vs_bare_https"],
        ),
        (
            "log rows/s acked (20-line POSTs)",
            quarry["log"]["rows_per_s"],
            storage["rows_per_s"],
            ratios["log_rows_vs_raw_inserts"],
        ),
        (
            "log rows/s visible (1024-line gzip POSTs)",
            quarry["log_full_batches"]["rows_visible_per_s"],
            storage["rows_per_s"],
            ratios["full_batches_visible_vs_raw_inserts"],
        ),
    ]
    rows = [(*row[:3], _ratio(row[3])) for row in rows]
    return [
        f"## Against the physical limits (closed loop: {bare['connections']} connections, "
        f"{quarry['log']['connections']} for logs)",
        "",
        _table(("path", "Quarry /s", "ceiling /s", "ratio"), rows),
        "",
        f"HTTP ceiling: bare Starlette+uvicorn over the same TLS answering the same bytes. "
        f"Storage ceiling: raw inserts of the same rows, {storage['insert_batch_rows']} rows "
        f"per insert, into {storage.get('backend', 'the same store')}.",
        "",
    ]


def _authentication(authentication: dict[str, Any] | None) -> list[str]:
    if not authentication:
        return []
    endpoints = [("distributed read", "distributed_read"), ("config", "config")]
    rows = []
    for label, name in endpoints:
        figures = authentication[name]
        real, skipped = figures["authenticated"], figures["skipped"]
        rows.append(
            (
                label,
                real["requests_per_s"],
                skipped["requests_per_s"],
                _ratio(figures["ratio"]),
                f"{_cell(real['p50_ms'])} / {_cell(skipped['p50_ms'])}",
                f"{_cell(real['p99_ms'])} / {_cell(skipped['p99_ms'])}",
                f"{_cell(real['server_cpu_us_per_request'])} / "
                f"{_cell(skipped['server_cpu_us_per_request'])}",
            )
        )
    cache_lines = [
        f"- {label}: {authentication[name]['node_cache']['requests_answered']} requests "
        f"answered, {authentication[name]['node_cache']['hits']} node-cache hits, "
        f"{authentication[name]['node_cache']['enroll_service_calls']} calls to the enroll "
        "service."
        for label, name in endpoints
    ]
    return [
        f"## Authentication on the hot path (closed loop: {authentication['connections']} "
        "connections, same run)",
        "",
        _table(
            (
                "path",
                "authenticated /s",
                "authentication skipped /s",
                "ratio",
                "p50_ms (auth / skipped)",
                "p99_ms (auth / skipped)",
                "server CPU µs/request (auth / skipped)",
            ),
            rows,
        ),
        "",
        "Authentication skipped: the same gateway app, certificate, worker count and services "
        "in a second process, whose `authenticate` returns a fixed node without reading the "
        "key. The real gateway's node-key lookups during its runs (from its /metrics):",
        "",
        *cache_lines,
        "",
    ]


def _post_to_visible(latency: dict[str, Any] | None) -> list[str]:
    if not latency:
        return []
    visible, ack = latency["visible"], latency["ack"]
    rows = [
        ("its answer (ack)", ack, latency["posts_sent"] - latency["errors"]),
        ("all its rows visible in ClickHouse", visible, latency["posts_visible"]),
    ]
    return [
        f"## Log POST to rows visible (open loop: {latency['rate_per_s']:g} POSTs/s of "
        f"{latency['lines_per_post']} lines, gzip, for {latency['duration_s']:g} s)",
        "",
        _table(
            ("from sending the POST to", "p50_ms", "p99_ms", "max_ms", "POSTs"),
            [(name, f["p50_ms"], f["p99_ms"], f["max_ms"], posts) for name, f, posts in rows],
        ),
        "",
        f"{latency['posts_sent']} POSTs sent, {latency['errors']} errors, "
        f"{latency['posts_visible']} with every row visible; visibility polled every "
        f"{latency['poll_interval_ms']:g} ms plus its round trip (mean "
        f"{_cell(latency['poll_round_trip_ms'])} ms, {latency['polls']} polls), so a figure "
        f"overstates the truth by at most one poll interval plus one round trip.",
        "",
    ]


def _sweep(sweep: dict[str, Any]) -> list[str]:
    rows = []
    for stage in sweep["stages"]:
        endpoints = stage["fleet"]["endpoints"]
        worst_p95 = max((e["p95_ms"] or 0) for e in endpoints.values())
        requests = sum(e["requests"] for e in endpoints.values())
        errors = sum(e["errors"] for e in endpoints.values())
        rows.append(
            (
                stage["hosts"],
                requests,
                errors,
                worst_p95,
                _number(stage["costs"]["hosts_per_core"]),
                stage["verdict"] or "ok",
            )
        )
    return [
        f"## Sweep: last good N = {sweep['last_good_hosts']}",
        "",
        _table(("hosts", "requests", "errors", "worst p95 ms", "hosts/core", "verdict"), rows),
        "",
    ]


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    return "" if value is None else str(value)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"
