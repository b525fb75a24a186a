"""The benchmark's markdown report, rendered from its JSON figures."""

from __future__ import annotations

from typing import Any

from bench import enrollment_storm

ENDPOINT_COLUMNS = ("requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms")


PROCESS_ORDER = ("gateway", "ingest", "clickhouse", "enroll", "config", "distributed")


def render(figures: dict[str, Any]) -> str:
    lines = ["# Quarry benchmark", ""]
    lines += _environment(figures["environment"], figures["settings"])
    if "sweep" in figures:
        for name, sweep in figures["sweep"].items():
            lines += _sweep(name, sweep)
        return "\n".join(lines) + "\n"
    workloads = figures["workloads"]
    lines += _side_by_side(workloads, figures.get("phases", {}))
    for name, run in workloads.items():
        lines += _workload(name, run)
    lines += _saturation(figures["saturation"], figures["ratios"])
    lines += _authentication(figures["saturation"].get("authentication"))
    lines += _post_to_visible(figures["saturation"]["quarry"].get("log_post_to_visible"))
    lines += _phases(figures.get("phases", {}))
    return "\n".join(lines) + "\n"


def _environment(env: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    store = settings.get("clickhouse_url") or "embedded chdb"
    return [
        f"Machine: {env['cpu_model']}, {env['cpu_count']} cores, {env['memory_gib']} GiB, "
        f"Linux {env['kernel']}, Python {env['python']}.",
        f"ClickHouse {env['clickhouse']} ({store}). {packages}.",
        f"Gateway workers: {settings['gateway_workers']}. {settings['hosts']} hosts; intervals: "
        f"config {settings['config_interval']:g} s, logs {settings['log_interval']:g} s, "
        f"distributed {settings['distributed_interval']:g} s; measured window "
        f"{settings['duration']:g} s after a {settings['start_period']:g} s start period and "
        f"warm-up; fleet gzip {'on' if settings['gzip'] else 'off'}, events gzip on.",
        "",
    ]


# --- the two workloads side by side ---------------------------------------------------------


def _side_by_side(workloads: dict[str, Any], phases: dict[str, Any]) -> list[str]:
    names = list(workloads)
    windows = {name: run.get("window") or {} for name, run in workloads.items()}
    processes = _process_names(windows.values())

    def row(label: str, value) -> tuple[Any, ...]:
        return (label, *(value(workloads[name], windows[name]) for name in names))

    def per_process(label: str, key: str, digits: int) -> list[tuple[Any, ...]]:
        return [
            row(
                f"{label}: {process}",
                lambda _run, w, p=process: _rounded(
                    w.get("processes", {}).get(p, {}).get(key), digits
                ),
            )
            for process in processes
        ]

    rows = [
        row("what", lambda run, _w: run["workload"]["summary"]),
        row("hosts enrolled", lambda run, _w: run["fleet"]["hosts_enrolled"]),
        row("measured window (s)", lambda _run, w: _rounded(w.get("window_s"), 0)),
        row("requests/s", lambda _run, w: _rounded(w.get("requests_per_s"), 0)),
        row("on schedule (distributed reads per host per interval)", lambda _run, w: _rounded(
            w.get("on_schedule"), 2)),
        row("log rows/s acknowledged", lambda _run, w: _rounded(w.get("rows_per_s"), 0)),
        row(
            "**hosts per core, whole stack**",
            lambda _run, w: f"**{_number(w.get('hosts_per_core'))}**",
        ),
        row("server CPU (cores), all processes", lambda _run, w: _rounded(
            w.get("server_cores"), 3)),
        *per_process("cores", "cores", 3),
        *per_process("CPU µs per request", "cpu_us_per_request", 1),
        *per_process("CPU µs per row", "cpu_us_per_row", 1),
        row("latency p50 / p95 / p99 (ms), all requests", lambda _run, w: _percentiles(
            w.get("all_requests"))),
        row("log POST p50 / p95 / p99 (ms)", lambda _run, w: _percentiles(
            w.get("endpoints", {}).get("log"))),
        row("errors (window / whole run)", lambda run, w: _errors(run, w)),
        row("rows acknowledged = rows stored", lambda run, _w: _rows_check(run["rows_check"])),
        row("ClickHouse inserts/s (rows per insert)", lambda _run, w: _inserts(w)),
        row("ClickHouse server idle before the run (cores)", lambda run, _w: _rounded(
            run.get("clickhouse_idle_cores"), 3) or "n/a (chdb)"),
        row("POST-to-rows-visible p50 / p99 (ms)", lambda run, _w: _visible(run)),
        row("gateway RSS peak (MB)", lambda run, _w: _rounded(
            run["costs"]["processes"].get("gateway", {}).get("rss_max_bytes", 0) / 2**20, 0)),
        row("hosts per core, whole run incl. start-up", lambda run, _w: _number(
            run["costs"]["hosts_per_core"])),
    ]  # fmt: skip
    return [
        "## Two workloads side by side (steady-state window, server side from /proc)",
        "",
        _table(("figure", *names), rows),
        "",
        _idle_connections_line(phases.get("idle_connections")),
        "",
    ]


def _process_names(windows) -> list[str]:
    seen = {name for window in windows for name in window.get("processes", {})}
    ordered = [name for name in PROCESS_ORDER if name in seen]
    return ordered + sorted(seen - set(ordered) - {"total"})


def _percentiles(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    return " / ".join(_cell(stats.get(key)) for key in ("p50_ms", "p95_ms", "p99_ms"))


def _errors(run: dict[str, Any], window: dict[str, Any]) -> str:
    whole = sum(e["errors"] for e in run["fleet"]["endpoints"].values())
    return f"{window.get('all_requests', {}).get('errors', '')} / {whole}"


def _rows_check(rows: dict[str, Any]) -> str:
    accepted, found = sum(rows["accepted"].values()), sum(rows["found"].values())
    verdict = f"{accepted:,} = {found:,}"
    if not rows["equal"]:
        verdict = f"{accepted:,} ≠ {found:,} (NOT EQUAL)"
    unacknowledged = rows.get("lines_unacknowledged", 0)
    return verdict + (f"; {unacknowledged} lines never acknowledged" if unacknowledged else "")


def _inserts(window: dict[str, Any]) -> str:
    inserts = window.get("clickhouse_inserts")
    if not inserts:
        return ""
    return f"{inserts['inserts_per_s']:.1f} ({_number(inserts['rows_per_insert'])})"


def _visible(run: dict[str, Any]) -> str:
    latency = run.get("post_to_visible")
    if not latency:
        return "not measured"
    visible = latency["visible"]
    return f"{_cell(visible['p50_ms'])} / {_cell(visible['p99_ms'])}"


def _idle_connections_line(figures: dict[str, Any] | None) -> str:
    if not figures or "skipped" in figures:
        why = figures["skipped"] if figures else "not run"
        return f"Gateway memory per 1,000 idle keep-alive connections: not measured ({why})."
    per_connection_kb = figures.get("kb_per_connection")
    if per_connection_kb is None:
        return "Gateway memory per idle keep-alive connection: see the phase's figures below."
    return (
        "Gateway memory per 1,000 idle keep-alive connections: "
        f"**{per_connection_kb * 1000 / 1024:,.1f} MB** ({per_connection_kb:,.1f} KB each)."
    )


# --- one workload in detail -------------------------------------------------------------------


def _workload(name: str, run: dict[str, Any]) -> list[str]:
    fleet, costs, rows = run["fleet"], run["costs"], run["rows_check"]
    window = run.get("window")
    endpoints = (window or fleet)["endpoints"]
    lines = [
        f"## Workload `{name}`: {fleet['config']['hosts']} simulated hosts for "
        f"{fleet['wall_s']:.0f} s",
        "",
        f"{run['workload']['summary']}. Enrolled {fleet['hosts_enrolled']}; "
        f"{fleet['host_seconds']:.0f} host-seconds; "
        f"{fleet['emulator'].get('connections', 'n/a')} TLS connections opened.",
        "",
        ("Calls in the measured window" if window else "Calls over the whole run") + ":",
        "",
        _table(
            ("endpoint", *ENDPOINT_COLUMNS),
            [
                (endpoint, *(stats[c] for c in ENDPOINT_COLUMNS))
                for endpoint, stats in endpoints.items()
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
        "Cost (server side: every Quarry process and ClickHouse, from /proc):",
        "",
        f"- Whole run: server CPU {costs['server_cpu_s']:.1f} s, load generator "
        f"{costs['client_cpu_s']:.1f} s; {costs['cpu_s_per_host_second'] * 1e6:,.1f} µs per "
        f"host-second, so {_number(costs['hosts_per_core'])} hosts per core with start-up.",
        *_window_line(window),
        "",
        _process_table(costs, window),
        "",
    ]
    return lines


def _window_line(window: dict[str, Any] | None) -> list[str]:
    if not window:
        return ["- No measured window (the run stopped before it opened)."]
    return [
        f"- Measured window, {window['from_s']:.0f}-{window['until_s']:.0f} s: "
        f"{window['cpu_s_per_host_second'] * 1e6:,.1f} µs per host-second, so "
        f"**{_number(window['hosts_per_core'])} hosts per core**; "
        f"{window['requests_per_s']:,.0f} requests/s, {window['rows_per_s']:,.0f} rows/s."
    ]


def _process_table(costs: dict[str, Any], window: dict[str, Any] | None) -> str:
    header = ("process", "cpu_s (run)", "rss_max_mb", "rss per 10k hosts (MB)")
    window_header = ("cores (window)", "share", "µs/request", "µs/row")
    rows = []
    for name, process in costs["processes"].items():
        row = (
            name,
            round(process["cpu_s"], 1),
            round(process["rss_max_bytes"] / 2**20, 1),
            round(costs["rss_per_10k_hosts_mb"][name], 1),
        )
        if window:
            figures = window["processes"].get(name, {})
            row += (
                _rounded(figures.get("cores"), 3),
                f"{figures.get('share', 0):.0%}",
                _rounded(figures.get("cpu_us_per_request"), 1),
                _rounded(figures.get("cpu_us_per_row"), 1),
            )
        rows.append(row)
    return _table(header + (window_header if window else ()), rows)


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


def _sweep(name: str, sweep: dict[str, Any]) -> list[str]:
    rows = []
    for stage in sweep["stages"]:
        measured = stage.get("window") or stage["fleet"]
        endpoints = measured["endpoints"]
        worst_p95 = max((e["p95_ms"] or 0) for e in endpoints.values())
        requests = sum(e["requests"] for e in endpoints.values())
        errors = sum(e["errors"] for e in endpoints.values())
        per_core = (stage.get("window") or stage["costs"])["hosts_per_core"]
        rows.append(
            (stage["hosts"], requests, errors, worst_p95, _number(per_core),
             stage["verdict"] or "ok")
        )  # fmt: skip
    return [
        f"## Sweep of `{name}`: last good N = {sweep['last_good_hosts']}",
        "",
        _table(("hosts", "requests", "errors", "worst p95 ms", "hosts/core", "verdict"), rows),
        "",
    ]


def _phases(phases: dict[str, Any]) -> list[str]:
    """Figures of the phases run on the last workload's cluster (bench/__main__.py)."""
    lines = []
    for name, figures in phases.items():
        if "skipped" in figures:
            continue
        if name == "enrollment_storm":
            lines += [enrollment_storm.markdown(figures), ""]
            continue
        scalars = [(key, value) for key, value in figures.items() if not isinstance(value, dict)]
        lines += [f"## Phase `{name}`", "", _table(("figure", "value"), scalars), ""]
    return lines


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


def _rounded(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"
