"""The gateway's Prometheus metrics (names quarry_gateway_<thing>_<unit>)."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram

from gateway.request_body import REFUSAL_REASONS

REQUESTS = Counter(
    "quarry_gateway_requests_total",
    "osquery requests by endpoint and outcome (ok, node_invalid, bad_request, error).",
    ["endpoint", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "quarry_gateway_request_duration_seconds",
    "Time to answer an osquery request, by endpoint.",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
REQUEST_BYTES = Histogram(
    "quarry_gateway_request_size_bytes",
    "Size of each osquery request body as received (gzip-compressed when sent so), by endpoint.",
    ["endpoint"],
    buckets=SIZE_BUCKETS,
)
RESPONSE_BYTES = Histogram(
    "quarry_gateway_response_size_bytes",
    "Size of each answer body sent to osquery, by endpoint.",
    ["endpoint"],
    buckets=SIZE_BUCKETS,
)
NODE_CACHE = Counter(
    "quarry_gateway_node_cache_lookups_total",
    "Node key authentications by result: hit (in memory), miss_found and miss_unknown "
    "(asked the enroll service), negative_hit (recently unknown or revoked), empty (no key).",
    ["result"],
)
# Gauges say how to combine workers in multiprocess mode: every worker holds the same
# caches (max), while in-flight work adds up (livesum).
NODES_CACHED = Gauge(
    "quarry_gateway_nodes_cached", "Valid node keys held in memory.", multiprocess_mode="max"
)
ACTIVE_NODES = Gauge(
    "quarry_gateway_active_nodes",
    "Nodes that authenticated at this gateway in the last 5 minutes (the largest count of "
    "any worker: a node's connections may reach several workers).",
    multiprocess_mode="max",
)
ENROLLMENTS = Counter(
    "quarry_gateway_enrollments_total",
    "Enroll requests by outcome (ok, pending: awaits approval, refused, unavailable).",
    ["outcome"],
)
TLS_CONNECTIONS = Counter(
    "quarry_gateway_tls_connections_total",
    "TCP connections accepted, and those whose TLS handshake succeeded (established); "
    "the difference is failed handshakes, e.g. a missing or untrusted client certificate.",
    ["stage"],
)
OPEN_CONNECTIONS = Gauge(
    "quarry_gateway_open_connections",
    "TLS connections established and not yet closed (osquery keeps about three per host, "
    "idle between requests).",
    multiprocess_mode="livesum",
)
TLS_BUFFER_BYTES_RELEASED = Counter(
    "quarry_gateway_tls_buffer_released_bytes",
    "Bytes of TLS buffer pages handed back to the system after a connection carried a "
    "large body or answer (gateway/read_buffers.py).",
)
LOG_BATCHES = Counter(
    "quarry_gateway_log_batches_total",
    "Log batches sent to ingest, by kind and outcome (ok, duplicate, error: not stored, "
    "whether ingest refused it, timed out or was unreachable).",
    ["kind", "outcome"],
)
LOG_ACK_SECONDS = Histogram(
    "quarry_gateway_log_ack_duration_seconds",
    "From sending a log batch over ZeroMQ to its acknowledgement, by ingest replica "
    "(host:port of QUARRY_INGEST_ZMQ_ADDRS; none: no replica was reachable).",
    ["replica"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LOG_BATCHES_SENT = Counter(
    "quarry_gateway_log_batches_sent_total",
    "Log batches handed to a ZeroMQ socket for an ingest replica.",
)
LOG_ACKS = Counter(
    "quarry_gateway_log_acks_total",
    "What became of each log batch sent: ok (acked, stored), error (acked with an error), "
    "timeout (no ack within log_ack_timeout_s), unreachable (no replica connected), by "
    "ingest replica (host:port; none when unreachable).",
    ["result", "replica"],
)
# The replica label of a batch that no replica took.
NO_REPLICA = "none"
REQUESTS_IN_FLIGHT = Gauge(
    "quarry_gateway_requests_in_flight",
    "osquery requests read and not yet answered, by endpoint, summed over the workers "
    "(sampled every second).",
    ["endpoint"],
    multiprocess_mode="livesum",
)
# Counted per request in a plain dict and copied to the gauge by sample_requests_in_flight:
# a multiprocess gauge's inc() and dec() write its file under a lock, several microseconds a
# request on the hottest path, while a request answered without waiting is never in flight
# at a moment the loop could sample.
IN_FLIGHT_SAMPLE_S = 1.0
requests_in_flight: dict[str, int] = {}
LOG_BATCHES_IN_FLIGHT = Gauge(
    "quarry_gateway_log_batches_in_flight",
    "Log batches sent and not yet acknowledged.",
    multiprocess_mode="livesum",
)
LOG_BATCH_FAILOVERS = Counter(
    "quarry_gateway_log_batch_failovers_total",
    "Log batches sent to another ingest replica because their first choice was unreachable.",
)
LIVE_QUERIES_OPEN = Gauge(
    "quarry_gateway_live_queries_open", "Open live query campaigns held.", multiprocess_mode="max"
)
HOST_QUERIES_ASKED = Counter(
    "quarry_gateway_host_queries_asked_total",
    "Scheduled host query groups added to a distributed read (one per host per due slot), "
    "by group (vitals, software; docs/inventory.md).",
    ["group"],
)
HOST_QUERY_ANSWERS = Counter(
    "quarry_gateway_host_query_answers_total",
    "Answers to scheduled host queries in distributed writes, by group (other: a group this "
    "gateway does not run) and outcome (ok, failed: osquery reported an error, e.g. a table "
    "missing on the platform; unreadable_name).",
    ["group", "outcome"],
)
BATCHED_WRITES = Counter(
    "quarry_gateway_batched_writes_total",
    "Check-in writes flushed to the services, by kind (checkin, delivery, answer).",
    ["kind"],
)
WATCH_SYNCED = Gauge(
    "quarry_gateway_watch_synced",
    "1 while a watch stream (nodes, config, campaigns) has its snapshot and is live.",
    ["stream"],
    multiprocess_mode="min",
)
CONFIG_GROUPS_CACHED = Gauge(
    "quarry_gateway_config_groups_cached",
    "Rendered configs held in memory: one per node group of the live state and the candidate.",
    multiprocess_mode="max",
)
CONFIG_COMPOSITIONS = Counter(
    "quarry_gateway_config_compositions_total",
    "Configs composed for a node group (once per group after each config change).",
)
CONFIG_SERVED_BYTES = Histogram(
    "quarry_gateway_config_served_bytes",
    "Size of each config served to a node.",
    buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576),
)
CONFIG_FETCHES_RECORDED = Counter(
    "quarry_gateway_config_fetches_recorded_total",
    "Config fetches (node, hash, version) sent to the config service, by outcome (ok, error).",
    ["outcome"],
)
REFUSED_REQUESTS = Counter(
    "quarry_gateway_refused_requests_total",
    "Requests refused for their input, by endpoint and reason: "
    + ", ".join(REFUSAL_REASONS)
    + " (gateway/request_body.py).",
    ["endpoint", "reason"],
)
TLS_RELOADS = Counter(
    "quarry_gateway_tls_reloads_total",
    "Certificate reloads after the files changed on disk, by result (ok; error: the old "
    "certificate stays in use).",
    ["result"],
)

# Every bounded label value is exported from the start, at zero, so rates and alerts
# see a series before the first event (an absent series is not a zero).
ENDPOINT_NAMES = (
    "enroll",
    "config",
    "log",
    "distributed_read",
    "distributed_write",
    "carve_begin",
    "carve_block",
)
for _endpoint in ENDPOINT_NAMES:
    for _outcome in ("ok", "node_invalid", "bad_request", "error"):
        REQUESTS.labels(_endpoint, _outcome)
    for _reason in REFUSAL_REASONS:
        REFUSED_REQUESTS.labels(_endpoint, _reason)
for _outcome in ("ok", "pending", "refused", "unavailable"):
    ENROLLMENTS.labels(_outcome)
for _stage in ("accepted", "established"):
    TLS_CONNECTIONS.labels(_stage)
for _result in ("ok", "error"):
    TLS_RELOADS.labels(_result)
LOG_ACKS.labels("unreachable", NO_REPLICA)
LOG_ACK_SECONDS.labels(NO_REPLICA)
for _endpoint in ENDPOINT_NAMES:
    REQUESTS_IN_FLIGHT.labels(_endpoint)
    requests_in_flight[_endpoint] = 0


async def sample_requests_in_flight() -> None:
    """Copy the in-flight counts to their gauge every IN_FLIGHT_SAMPLE_S, for ever."""
    while True:
        for endpoint, count in requests_in_flight.items():
            REQUESTS_IN_FLIGHT.labels(endpoint).set(count)
        await asyncio.sleep(IN_FLIGHT_SAMPLE_S)


def count_acks_from(replica: str) -> None:
    """Export an ingest replica's ack series at zero, once the gateway knows its replicas."""
    for result in ("ok", "error", "timeout"):
        LOG_ACKS.labels(result, replica)
    LOG_ACK_SECONDS.labels(replica)


for _result in ("hit", "miss_found", "miss_unknown", "negative_hit", "empty"):
    NODE_CACHE.labels(_result)
