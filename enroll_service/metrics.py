"""Prometheus metrics of the enroll service (never labelled by node, host or secret name)."""

from prometheus_client import Counter, Gauge, Histogram

from enroll_service.enroll_secrets import STATES

ENROLLMENT_OUTCOMES = (
    "enrolled",
    "reenrolled",
    "pending",
    "invalid_secret",
    "secret_revoked",
    "secret_expired",
    "secret_exhausted",
    "node_revoked",
    "cooldown",
    "rate_limited",
)
ENROLLMENTS = Counter(
    "quarry_enroll_enrollments_total",
    "Enrollment attempts by outcome (" + ", ".join(ENROLLMENT_OUTCOMES) + ").",
    ["outcome"],
)
VALID_NODES = Gauge(
    "quarry_enroll_valid_nodes", "Nodes holding a valid (not revoked) node key, pending included."
)
SUSPECTED_CLONES = Gauge(
    "quarry_enroll_suspected_clones",
    "Identities whose enrollments within the clone window look like several live machines.",
)
SECRETS = Gauge("quarry_enroll_secrets", "Enroll secrets by state.", ["state"])
CHECKINS = Counter(
    "quarry_enroll_checkins_recorded_total", "Last-seen updates received in RecordCheckins."
)
NODE_LOOKUPS = Counter(
    "quarry_enroll_node_lookups_total", "GetNode calls by result (found, not_found).", ["result"]
)
REVOCATIONS = Counter("quarry_enroll_revocations_total", "Nodes revoked or rejected.")
ENROLL_GROUP_SIZE = Histogram(
    "quarry_enroll_group_size_enrollments",
    "Enrollments written per transaction (group commit; 1 when they arrive one by one).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
WATCH_STREAMS = Gauge("quarry_enroll_watch_streams", "Open WatchNodes streams.")

# Every outcome and state is exported from the start, at zero, so rates need no guessing.
for _outcome in ENROLLMENT_OUTCOMES:
    ENROLLMENTS.labels(_outcome)
for _state in STATES:
    SECRETS.labels(_state)
for _result in ("found", "not_found"):
    NODE_LOOKUPS.labels(_result)
