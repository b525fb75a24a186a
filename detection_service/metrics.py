"""Prometheus metrics of the detection service (labelled by rule, never by host)."""

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter(
    "quarry_detection_runs_total",
    "Rule runs by outcome (ok, error, superseded: another replica ran the window).",
    ["rule", "outcome"],
)
RUN_SECONDS = Histogram(
    "quarry_detection_run_seconds",
    "Time of one rule run: its SQL through ingest, and committing its alerts.",
    ["rule"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HITS = Counter("quarry_detection_hits_total", "Answer rows of rule runs (hits).", ["rule"])
LAG = Gauge(
    "quarry_detection_lag_seconds",
    "Seconds between now and the rule's watermark (rows stored since are not evaluated yet).",
    ["rule"],
)
# Beside the lag, so an alert can tell a rule that is behind from one that runs rarely
# (deploy/prometheus/rules/quarry-alerts.yml, QuarryDetectionRuleLagging).
SCHEDULE = Gauge("quarry_detection_schedule_seconds", "Seconds between the rule's runs.", ["rule"])
DELIVERIES = Counter(
    "quarry_detection_deliveries_total",
    "Alert event deliveries by destination kind (clickhouse, alertmanager, webhook) and"
    " outcome (delivered, failed).",
    ["destination", "outcome"],
)
PENDING = Gauge("quarry_detection_outbox_pending", "Alert events not delivered yet.")
OPEN_ALERTS = Gauge("quarry_detection_open_alerts", "Alerts open now.")
LEADER = Gauge("quarry_detection_leader", "1 on the replica that runs the rules.")
