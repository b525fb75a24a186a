"""Prometheus metrics of the enroll service (never labelled by node or host)."""

from prometheus_client import Counter, Gauge

ENROLLMENTS = Counter(
    "quarry_enroll_enrollments_total",
    "Enrollment attempts by outcome (enrolled, reenrolled, invalid_secret).",
    ["outcome"],
)
VALID_NODES = Gauge("quarry_enroll_valid_nodes", "Nodes holding a valid (not revoked) node key.")
CHECKINS = Counter(
    "quarry_enroll_checkins_recorded_total", "Last-seen updates received in RecordCheckins."
)
NODE_LOOKUPS = Counter(
    "quarry_enroll_node_lookups_total", "GetNode calls by result (found, not_found).", ["result"]
)
REVOCATIONS = Counter("quarry_enroll_revocations_total", "Nodes revoked.")
WATCH_STREAMS = Gauge("quarry_enroll_watch_streams", "Open WatchNodes streams.")
