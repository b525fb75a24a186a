"""Prometheus metrics of the config service."""

from prometheus_client import Counter, Gauge

CONFIG_CHANGES = Counter(
    "quarry_config_set_requests_total",
    "SetConfig calls by outcome (stored, unchanged, invalid).",
    ["outcome"],
)
LIVE_VERSION = Gauge("quarry_config_live_version", "Version number of the live config.")
LIVE_SIZE = Gauge("quarry_config_live_size_bytes", "Size of the live config as sent to osquery.")
WATCH_STREAMS = Gauge("quarry_config_watch_streams", "Open WatchConfig streams.")
