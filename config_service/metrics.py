"""Prometheus metrics of the config service."""

from prometheus_client import Counter, Gauge

APPLIES = Counter(
    "quarry_config_apply_requests_total",
    "ApplyState, SetConfig and Rollback calls by outcome"
    " (live, rollout, unchanged, dry_run, invalid).",
    ["outcome"],
)
VERSIONS_STORED = Gauge("quarry_config_versions_stored", "State versions in the store.")
LIVE_VERSION = Gauge("quarry_config_live_version", "Version number of the live state.")
LIVE_SIZE = Gauge(
    "quarry_config_live_size_bytes", "Size of the live state rendered for the global group."
)
ROLLOUT_IN_PROGRESS = Gauge(
    "quarry_config_rollout_in_progress", "1 while a staged rollout of a candidate is running."
)
ROLLOUT_CANDIDATE = Gauge(
    "quarry_config_rollout_candidate_version", "Version of the rollout's candidate (0: none)."
)
LABEL_EVALUATIONS = Counter(
    "quarry_config_label_evaluations_total",
    "Label evaluations by outcome (done, failed).",
    ["outcome"],
)
LABEL_MEMBERS = Gauge("quarry_config_label_members", "Members of each label.", ["label"])
FETCHES_RECORDED = Counter(
    "quarry_config_fetches_recorded_total", "Config fetches reported by the gateways."
)
WATCH_STREAMS = Gauge("quarry_config_watch_streams", "Open WatchConfig streams.")

# Every outcome is exported from the start, at zero, so rates need no guessing.
for _outcome in ("live", "rollout", "unchanged", "dry_run", "invalid"):
    APPLIES.labels(_outcome)
for _outcome in ("done", "failed"):
    LABEL_EVALUATIONS.labels(_outcome)
