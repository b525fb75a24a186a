"""Prometheus metrics of the ingest service (served on /metrics by quarry.metrics_endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCHES = Counter(
    "quarry_ingest_batches_total",
    "Log batches received from gateways, by outcome: stored, duplicate, rejected "
    "(unreadable, acked with an error), failed (the insert failed, acked with an error).",
    ["outcome"],
)
ROWS_INSERTED = Counter(
    "quarry_ingest_rows_inserted_total",
    "Rows inserted into ClickHouse, by table.",
    ["table"],
)
INSERT_SECONDS = Histogram(
    "quarry_ingest_insert_duration_seconds",
    "Time one group-commit insert into one table took, successful or not.",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INSERT_ERRORS = Counter(
    "quarry_ingest_insert_errors_total",
    "Group-commit inserts that failed (every batch of the group was acked with an error).",
    ["table"],
)
DUPLICATES = Counter(
    "quarry_ingest_duplicate_batches_total",
    "Batches dropped because the same batch_id was already stored or pending.",
)
SKIPPED_RECORDS = Counter(
    "quarry_ingest_skipped_records_total",
    "Malformed log records skipped inside otherwise readable batches.",
)
UNSETTLED_BATCHES = Gauge(
    "quarry_ingest_unsettled_batches",
    "Batches received but not yet acknowledged (pending or being inserted).",
)
PENDING_ROWS = Gauge(
    "quarry_ingest_pending_rows",
    "Rows waiting for the next group-commit insert.",
)
