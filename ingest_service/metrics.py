"""Prometheus metrics of ingest (served on /metrics by quarry.runtime.metrics_endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from ingest_service.schema import TABLE_NAMES

BATCHES = Counter(
    "quarry_ingest_batches_total",
    "Log batches received from gateways, by outcome: stored (fsynced to the spool, acked ok), "
    "duplicate (every line stored before), rejected (unreadable, acked with an error), failed "
    "(spool full or the spool write failed, acked with an error), expired (arrived after the "
    "gateway stopped waiting: dropped unstored, osquery sends the lines again).",
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
    "Replay inserts that failed (the group is retried with backoff; nothing is dropped).",
    ["table"],
)
DUPLICATES = Counter(
    "quarry_ingest_duplicate_batches_total",
    "Batches dropped because the same batch_id was already stored or pending.",
)
REPEATED_LINES = Counter(
    "quarry_ingest_repeated_lines_total",
    "Log lines recognised as stored before (re-sent by osquery, often merged into a new "
    "batch) and not stored again (docs/adr/0012-line-level-exactly-once.md).",
)
REMEMBERED_LINE_SETS = Gauge(
    "quarry_ingest_remembered_line_sets",
    "Nodes and log kinds whose recent line identities ingest remembers (as of the last "
    "snapshot); about 250 bytes plus 16 per line each.",
)
REPLAY_FAILURES = Counter(
    "quarry_ingest_replay_failures_total",
    "Replay insert attempts that failed (retried with backoff, 0.1 s doubling to 5 s).",
)
SKIPPED_RECORDS = Counter(
    "quarry_ingest_skipped_records_total",
    "Malformed log records skipped inside otherwise readable batches.",
)
UNSETTLED_BATCHES = Gauge(
    "quarry_ingest_unsettled_batches",
    "Batches received but not yet acknowledged (waiting for their spool append).",
)
PENDING_ROWS = Gauge(
    "quarry_ingest_pending_rows",
    "Rows spooled by this process and not yet inserted into ClickHouse.",
)
SPOOL_UNREPLAYED_BYTES = Gauge(
    "quarry_ingest_spool_unreplayed_bytes",
    "Bytes in the spool acknowledged but not yet confirmed inserted into ClickHouse.",
)
SPOOL_OLDEST_AGE_SECONDS = Gauge(
    "quarry_ingest_spool_oldest_record_age_seconds",
    "Age of the oldest spooled batch not yet inserted into ClickHouse (0 when caught up).",
)
SPOOL_FULL_RATIO = Gauge(
    "quarry_ingest_spool_full_ratio",
    "Unreplayed spool bytes as a share of ingest_spool_max_bytes (1: new batches are refused).",
)
SPOOL_LIMIT_BYTES = Gauge(
    "quarry_ingest_spool_limit_bytes",
    "ingest_spool_max_bytes: above this many unreplayed bytes new batches are refused.",
)
SPOOL_DISK_FREE_BYTES = Gauge(
    "quarry_ingest_spool_disk_free_bytes",
    "Free space on the file system of the spool (the ingest state directory).",
)
SPOOL_APPENDS = Counter(
    "quarry_ingest_spool_appends_total",
    "Batches written and fsynced to the spool.",
)
SPOOL_FSYNC_SECONDS = Histogram(
    "quarry_ingest_spool_fsync_duration_seconds",
    "Time one fsync of a spool append group took.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REPLAY_LAG_BATCHES = Gauge(
    "quarry_ingest_replay_lag_batches",
    "Spooled batches waiting to be inserted into ClickHouse.",
)
SPOOL_FULL_REFUSALS = Counter(
    "quarry_ingest_spool_full_refusals_total",
    "Batches acked with an error because the spool held more than ingest_spool_max_bytes.",
)

# Every outcome and table is exported from the start, at zero: "no insert has failed" is a
# 0, not a missing series, for rates, alerts and dashboards alike.
# Bound once: a labels() look-up per batch costs a lock and a dict look-up each time.
BATCHES_STORED = BATCHES.labels("stored")
BATCHES_DUPLICATE = BATCHES.labels("duplicate")
BATCHES_REJECTED = BATCHES.labels("rejected")
BATCHES_FAILED = BATCHES.labels("failed")
BATCHES_EXPIRED = BATCHES.labels("expired")
for _table in TABLE_NAMES:
    ROWS_INSERTED.labels(_table)
    INSERT_ERRORS.labels(_table)
    INSERT_SECONDS.labels(_table)
CURVE_REFUSALS = Counter(
    "quarry_ingest_curve_refusals_total",
    "ZeroMQ CURVE handshakes this ingest refused (QUARRY_ZMQ_CURVE): a gateway with a key not "
    "in authorized_clients, or a peer without CURVE. Their batches are never received.",
)
