"""Writes Quarry's Grafana dashboards (deploy/grafana/dashboards/*.json) from the panels below.

The JSON is committed, so Grafana needs nothing but the provisioning files; edit the panels
here and run `python deploy/grafana/generate_dashboards.py` to regenerate it. Every
expression uses $__rate_interval, so the dashboards fit any scrape interval, and every
series is narrowed to the dashboard's $job and $instance variables (both "All" by default).
p99 panels show 0 rather than a gap while a histogram has no observations.
tests/test_observability.py runs each expression against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARDS_DIR = Path(__file__).parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# Added to every series of every expression: the dashboard's variables.
SCOPE = 'job=~"$job", instance=~"$instance"'
SERIES = re.compile(r"\b(quarry_\w+|process_\w+|up)(\{[^}]*\})?(?=[\s\[)])")


@dataclass
class Panel:
    title: str
    exprs: dict[str, str]  # legend -> PromQL
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[list[Panel]] = field(default_factory=list)


def rate(metric: str, by: str = "", selector: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    series = f"{metric}{{{selector}}}" if selector else metric
    return f"sum{grouping} (rate({series}[{RATE}]))"


def p99(histogram: str, by: str = "", selector: str = "") -> str:
    """The 99th percentile per `by`; 0 while there is nothing to rank (histogram_quantile
    gives NaN then, which Grafana draws as a gap)."""
    grouping = f"{by}, le" if by else "le"
    series = f"{{{selector}}}" if selector else ""
    quantile = (
        f"histogram_quantile(0.99, sum by ({grouping}) (rate({histogram}_bucket{series}[{RATE}])))"
    )
    zero = f"sum{f' by ({by})' if by else ''} (rate({histogram}_count{series}[{RATE}])) * 0"
    return f"({quantile} >= 0) or ({zero})"


def scoped(expr: str) -> str:
    """expr with the dashboard's $job and $instance added to each series' selector."""

    def narrow(match: re.Match[str]) -> str:
        inside = (match.group(2) or "{}")[1:-1].strip()
        return f"{match.group(1)}{{{inside + ', ' if inside else ''}{SCOPE}}}"

    return SERIES.sub(narrow, expr)


def process_row(selector: str, legend: str) -> list[Panel]:
    """CPU, memory and event-loop lag of the processes `selector` picks, one line each."""
    return [
        Panel(
            "CPU",
            {legend: rate("process_cpu_seconds_total", "job, instance", selector)},
            unit="percentunit",
            description="Cores used (1 = one core); a gateway's includes its workers.",
        ),
        Panel(
            "Memory (resident)",
            {legend: f"sum by (job, instance) (process_resident_memory_bytes{{{selector}}})"},
            unit="bytes",
        ),
        Panel(
            "Event loop lag",
            {legend: f"max by (job, instance) (quarry_event_loop_lag_seconds{{{selector}}})"},
            unit="s",
            description="How late the process's event loop ran a timer (worst of the last "
            "10 s): work waiting for a busy or blocked loop. /livez fails past "
            "QUARRY_LIVENESS_WINDOW_S.",
        ),
    ]


OVERVIEW = Dashboard(
    "quarry-overview",
    "Quarry / Overview",
    "The fleet at a glance: size, check-ins, errors, log flow, ingest lag, live queries.",
    [
        [
            Panel("Fleet size", {"enrolled nodes": "max(quarry_enroll_valid_nodes)"}, kind="stat"),
            Panel(
                "Active nodes (5 min)",
                {"active": "sum(quarry_gateway_active_nodes)"},
                kind="stat",
                description="Nodes that authenticated at a gateway in the last 5 minutes.",
            ),
            Panel(
                "Live queries open",
                {"campaigns": "max(quarry_distributed_open_campaigns)"},
                kind="stat",
            ),
            Panel(
                "Services up",
                {"{{job}}": 'sum by (job) (up{job=~"quarry-.*"})'},
                kind="stat",
            ),
            Panel(
                "Detection alerts open",
                {"open": "max(quarry_detection_open_alerts)"},
                kind="stat",
                description="Alerts the detection rules raised that have not resolved.",
            ),
            Panel(
                "Versions running",
                {"{{version}}": "count by (version) (quarry_build_info)"},
                kind="stat",
                description="Processes per Quarry version: more than one during an upgrade.",
            ),
        ],
        [
            Panel(
                "Check-ins per second",
                {"{{endpoint}}": rate("quarry_gateway_requests_total", "endpoint")},
                unit="reqps",
            ),
            Panel(
                "Error rate",
                {
                    "errors": rate("quarry_gateway_requests_total", selector='outcome="error"')
                    + " / "
                    + rate("quarry_gateway_requests_total")
                },
                unit="percentunit",
                description="Share of osquery requests answered with an error (osquery retries).",
            ),
        ],
        [
            Panel(
                "Log rows inserted per second",
                {"{{table}}": rate("quarry_ingest_rows_inserted_total", "table")},
                unit="rowsps",
            ),
            Panel(
                "Ingest lag",
                {
                    "oldest unreplayed batch": "max(quarry_ingest_spool_oldest_record_age_seconds)",
                },
                unit="s",
                description="How far ClickHouse is behind the acknowledged logs.",
            ),
            Panel(
                "Ingest spool full",
                {"{{instance}}": "max by (instance) (quarry_ingest_spool_full_ratio)"},
                unit="percentunit",
                description="At 100% ingest refuses new batches (QuarryIngestRefusingLogs).",
            ),
        ],
        process_row('job=~"quarry-.*"', "{{job}} {{instance}}"),
    ],
)

GATEWAY = Dashboard(
    "quarry-gateway",
    "Quarry / Gateway",
    "The osquery HTTPS gateway: requests, latency, sizes, TLS, caches, the log path.",
    [
        [
            Panel(
                "Requests by endpoint and outcome",
                {
                    "{{endpoint}} {{outcome}}": rate(
                        "quarry_gateway_requests_total", "endpoint, outcome"
                    )
                },
                unit="reqps",
            ),
            Panel(
                "p99 latency by endpoint",
                {"{{endpoint}}": p99("quarry_gateway_request_duration_seconds", "endpoint")},
                unit="s",
            ),
        ],
        [
            Panel(
                "Request bytes per second by endpoint",
                {"{{endpoint}}": rate("quarry_gateway_request_size_bytes_sum", "endpoint")},
                unit="Bps",
            ),
            Panel(
                "Response bytes per second by endpoint",
                {"{{endpoint}}": rate("quarry_gateway_response_size_bytes_sum", "endpoint")},
                unit="Bps",
            ),
        ],
        [
            Panel(
                "TLS connections",
                {
                    "accepted": rate(
                        "quarry_gateway_tls_connections_total", selector='stage="accepted"'
                    ),
                    "failed handshakes": rate(
                        "quarry_gateway_tls_connections_total", selector='stage="accepted"'
                    )
                    + " - "
                    + rate("quarry_gateway_tls_connections_total", selector='stage="established"'),
                },
                unit="cps",
            ),
            Panel(
                "Open connections and requests in flight",
                {
                    "open connections (idle keep-alive included)": (
                        "sum(quarry_gateway_open_connections)"
                    ),
                    "in flight {{endpoint}}": (
                        "sum by (endpoint) (quarry_gateway_requests_in_flight)"
                    ),
                },
            ),
            Panel(
                "Node key authentications",
                {"{{result}}": rate("quarry_gateway_node_cache_lookups_total", "result")},
                unit="ops",
            ),
            Panel(
                "Nodes",
                {
                    "keys cached": "max(quarry_gateway_nodes_cached)",
                    "active (5 min)": "sum(quarry_gateway_active_nodes)",
                },
            ),
        ],
        [
            Panel(
                "Enrollments by outcome",
                {"{{outcome}}": rate("quarry_gateway_enrollments_total", "outcome")},
                unit="ops",
            ),
            Panel(
                "Watch streams synced",
                {"{{stream}}": "min by (stream) (quarry_gateway_watch_synced)"},
            ),
            Panel(
                "Config served (p99 size)",
                {"p99": p99("quarry_gateway_config_served_bytes")},
                unit="bytes",
            ),
        ],
        [
            Panel(
                "Log batches over ZeroMQ",
                {
                    "sent": rate("quarry_gateway_log_batches_sent_total"),
                    "ack {{result}} {{replica}}": rate(
                        "quarry_gateway_log_acks_total", "result, replica"
                    ),
                },
                unit="ops",
                description="Acks by result and ingest replica (host:port; none: unreachable).",
            ),
            Panel(
                "Log batches in flight",
                {"in flight": "sum(quarry_gateway_log_batches_in_flight)"},
            ),
            Panel(
                "Acknowledgement latency p99 by ingest replica",
                {"{{replica}}": p99("quarry_gateway_log_ack_duration_seconds", "replica")},
                unit="s",
            ),
        ],
        process_row('job="quarry-gateway"', "{{instance}}"),
    ],
)


def grpc_rows(job: str) -> list[list[Panel]]:
    """The gRPC panels every service shares (server side), for one scrape job."""
    selector = f'job="{job}"'
    return [
        [
            Panel(
                "gRPC calls by method and code",
                {
                    "{{method}} {{code}}": rate(
                        "quarry_grpc_server_calls_total", "method, code", selector
                    )
                },
                unit="ops",
            ),
            Panel(
                "gRPC p99 latency by method",
                {"{{method}}": p99("quarry_grpc_server_call_duration_seconds", "method", selector)},
                unit="s",
            ),
            Panel(
                "gRPC calls in flight",
                {
                    "{{method}}": "sum by (method) "
                    f"(quarry_grpc_server_calls_in_flight{{{selector}}})"
                },
            ),
        ],
        process_row(selector, "{{instance}}"),
    ]


ENROLL = Dashboard(
    "quarry-enroll",
    "Quarry / Enroll service",
    "Enrollment outcomes, nodes, secrets, clones and the enroll service's gRPC.",
    [
        [
            Panel(
                "Enrollments by outcome",
                {"{{outcome}}": rate("quarry_enroll_enrollments_total", "outcome")},
                unit="ops",
            ),
            Panel(
                "Nodes",
                {
                    "valid": "max(quarry_enroll_valid_nodes)",
                    "suspected clones": "max(quarry_enroll_suspected_clones)",
                },
            ),
            Panel(
                "Enroll secrets by state", {"{{state}}": "max by (state) (quarry_enroll_secrets)"}
            ),
        ],
        [
            Panel(
                "Check-ins recorded per second",
                {"check-ins": rate("quarry_enroll_checkins_recorded_total")},
                unit="ops",
            ),
            Panel(
                "Node lookups (cache misses at gateways)",
                {"{{result}}": rate("quarry_enroll_node_lookups_total", "result")},
                unit="ops",
            ),
            Panel("Watch streams", {"open": "sum(quarry_enroll_watch_streams)"}),
        ],
        *grpc_rows("quarry-enroll"),
    ],
)

CONFIG = Dashboard(
    "quarry-config",
    "Quarry / Config service",
    "Config versions, size, rollouts, labels, fetches and the config service's gRPC.",
    [
        [
            Panel("Live version", {"version": "max(quarry_config_live_version)"}, kind="stat"),
            Panel(
                "Live config size",
                {"bytes": "max(quarry_config_live_size_bytes)"},
                unit="bytes",
                kind="stat",
            ),
            Panel(
                "Rollout",
                {
                    "in progress": "max(quarry_config_rollout_in_progress)",
                    "candidate version": "max(quarry_config_rollout_candidate_version)",
                },
                kind="stat",
            ),
        ],
        [
            Panel(
                "Applies by outcome",
                {"{{outcome}}": rate("quarry_config_apply_requests_total", "outcome")},
                unit="ops",
            ),
            Panel(
                "Config fetches recorded per second",
                {"fetches": rate("quarry_config_fetches_recorded_total")},
                unit="ops",
            ),
            Panel(
                "Label evaluations",
                {"{{outcome}}": rate("quarry_config_label_evaluations_total", "outcome")},
                unit="ops",
            ),
        ],
        *grpc_rows("quarry-config"),
    ],
)

DISTRIBUTED = Dashboard(
    "quarry-distributed",
    "Quarry / Distributed service",
    "Live query campaigns, deliveries, answers and the distributed service's gRPC.",
    [
        [
            Panel("Open campaigns", {"open": "max(quarry_distributed_open_campaigns)"}),
            Panel(
                "Campaigns started and closed",
                {
                    "started": rate("quarry_distributed_campaigns_started_total"),
                    "closed {{reason}}": rate(
                        "quarry_distributed_campaigns_closed_total", "reason"
                    ),
                },
                unit="ops",
            ),
        ],
        [
            Panel(
                "Deliveries by outcome",
                {"{{outcome}}": rate("quarry_distributed_deliveries_total", "outcome")},
                unit="ops",
            ),
            Panel(
                "Answers by outcome",
                {"{{outcome}}": rate("quarry_distributed_answers_total", "outcome")},
                unit="ops",
            ),
            Panel(
                "Result rows per second",
                {
                    "reported by answers": rate("quarry_distributed_result_rows_total"),
                    "inserted": rate(
                        "quarry_ingest_rows_inserted_total", selector='table="distributed_results"'
                    ),
                },
                unit="rowsps",
            ),
        ],
        [
            Panel(
                "Hosts of open campaigns by state",
                {"{{state}}": "max by (state) (quarry_distributed_open_campaign_hosts)"},
            ),
            Panel(
                "Pending deliveries",
                {"hosts": "max(quarry_distributed_pending_deliveries)"},
                description="Hosts of open campaigns that have not read them yet.",
            ),
        ],
        *grpc_rows("quarry-distributed"),
    ],
)

INGEST = Dashboard(
    "quarry-ingest",
    "Quarry / Ingest service",
    "Batches from the gateways, the spool, inserts into ClickHouse.",
    [
        [
            Panel(
                "Batches by outcome",
                {"{{outcome}}": rate("quarry_ingest_batches_total", "outcome")},
                unit="ops",
            ),
            Panel(
                "Rows inserted per second by table",
                {"{{table}}": rate("quarry_ingest_rows_inserted_total", "table")},
                unit="rowsps",
            ),
            Panel(
                "Insert p99 latency by table",
                {"{{table}}": p99("quarry_ingest_insert_duration_seconds", "table")},
                unit="s",
            ),
        ],
        [
            Panel(
                "ClickHouse insert errors",
                {"{{table}}": rate("quarry_ingest_insert_errors_total", "table")},
                unit="ops",
            ),
            Panel(
                "Duplicates dropped",
                {"duplicates": rate("quarry_ingest_duplicate_batches_total")},
                unit="ops",
            ),
            Panel(
                "Batches waiting",
                {
                    "unsettled (before fsync)": "sum(quarry_ingest_unsettled_batches)",
                    "replay lag": "sum(quarry_ingest_replay_lag_batches)",
                },
            ),
        ],
        [
            Panel(
                "Spool unreplayed bytes",
                {"{{instance}}": "sum by (instance) (quarry_ingest_spool_unreplayed_bytes)"},
                unit="bytes",
            ),
            Panel(
                "Spool oldest record age",
                {
                    "{{instance}}": "max by (instance) "
                    "(quarry_ingest_spool_oldest_record_age_seconds)"
                },
                unit="s",
            ),
            Panel(
                "Spool fsync p99",
                {"p99": p99("quarry_ingest_spool_fsync_duration_seconds")},
                unit="s",
            ),
        ],
        [
            Panel(
                "Spool full",
                {"{{instance}}": "max by (instance) (quarry_ingest_spool_full_ratio)"},
                unit="percentunit",
                description="Unreplayed bytes as a share of QUARRY_INGEST_SPOOL_MAX_BYTES; at "
                "100% new batches are refused until ClickHouse catches up.",
            ),
            Panel(
                "Spool disk free",
                {"{{instance}}": "min by (instance) (quarry_ingest_spool_disk_free_bytes)"},
                unit="bytes",
            ),
        ],
        *grpc_rows("quarry-ingest"),
    ],
)

# A standby keeps the per-rule gauges of when it last led: only the leader's are current.
LEADER = "and on (job, instance) (quarry_detection_leader == 1)"

DETECTION = Dashboard(
    "quarry-detection",
    "Quarry / Detection service",
    "Detection rules (runs, lag, hits), open alerts, deliveries to ClickHouse, Alertmanager "
    "and webhooks, the leader, and the detection service's gRPC (docs/detections.md).",
    [
        [
            Panel(
                "Rule runs by outcome",
                {"{{rule}} {{outcome}}": rate("quarry_detection_runs_total", "rule, outcome")},
                unit="ops",
                description="error: the rule's SQL failed (its watermark waits; "
                "QuarryDetectionRunsFailing); superseded: another replica ran the window.",
            ),
            Panel(
                "Rule lag",
                {
                    "{{rule}}": f"max by (rule) (quarry_detection_lag_seconds {LEADER})",
                    "{{rule}} schedule": (
                        f"max by (rule) (quarry_detection_schedule_seconds {LEADER})"
                    ),
                },
                unit="s",
                description="Seconds between now and each rule's watermark: a sawtooth up to "
                "about settle + schedule when healthy; growing past three schedules is "
                "QuarryDetectionRuleLagging.",
            ),
            Panel(
                "Run p99 by rule",
                {"{{rule}}": p99("quarry_detection_run_seconds", "rule")},
                unit="s",
                description="The rule's SQL through ingest and the commit of its alerts.",
            ),
        ],
        [
            Panel(
                "Hits per second by rule",
                {"{{rule}}": rate("quarry_detection_hits_total", "rule")},
                unit="ops",
            ),
            Panel("Open alerts", {"open": "max(quarry_detection_open_alerts)"}),
            Panel(
                "Leader",
                {"{{instance}}": "max by (instance) (quarry_detection_leader)"},
                description="1 on the replica that runs the rules and deliveries; none is "
                "QuarryDetectionNoLeader.",
            ),
        ],
        [
            Panel(
                "Deliveries by destination and outcome",
                {
                    "{{destination}} {{outcome}}": rate(
                        "quarry_detection_deliveries_total", "destination, outcome"
                    )
                },
                unit="ops",
                description="Attempts: failed ones are retried with backoff "
                "(QuarryDetectionDeliveriesFailing when none gets through).",
            ),
            Panel(
                "Outbox pending",
                {"events": "max(quarry_detection_outbox_pending)"},
                description="Alert events not delivered yet, one per destination.",
            ),
        ],
        *grpc_rows("quarry-detection"),
    ],
)

DASHBOARDS = (OVERVIEW, GATEWAY, ENROLL, CONFIG, DISTRIBUTED, INGEST, DETECTION)


def panel_json(panel: Panel, panel_id: int, x: int, y: int, width: int) -> dict:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": scoped(expr),
            "legendFormat": legend,
            "refId": chr(65 + i),
        }
        for i, (legend, expr) in enumerate(panel.exprs.items())
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": width, "h": 4 if panel.kind == "stat" else 8},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": targets,
    }


def dashboard_json(dashboard: Dashboard) -> dict:
    panels, y, panel_id = [], 0, 1
    for row in dashboard.rows:
        width = 24 // len(row)
        for column, panel in enumerate(row):
            panels.append(panel_json(panel, panel_id, column * width, y, width))
            panel_id += 1
        y += max(panel["gridPos"]["h"] for panel in panels[-len(row) :])
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["quarry"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "quarry-prometheus"},
                },
                label_variable("job", "Job", 'up{job=~"quarry-.*"}'),
                label_variable("instance", "Instance", 'up{job=~"quarry-.*", job=~"$job"}'),
            ]
        },
        "links": [
            {
                "title": "Quarry dashboards",
                "type": "dashboards",
                "tags": ["quarry"],
                "asDropdown": True,
            }
        ],
        "panels": panels,
    }


def label_variable(name: str, label: str, series: str) -> dict:
    """A multi-value query variable over `series`' label `name`, "All" (.*) by default."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": f"label_values({series}, {name})", "refId": f"{name}-values"},
        "definition": f"label_values({series}, {name})",
        "refresh": 2,  # on time range change: replicas come and go
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def main() -> None:
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for dashboard in DASHBOARDS:
        path = DASHBOARDS_DIR / f"{dashboard.uid}.json"
        path.write_text(json.dumps(dashboard_json(dashboard), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
