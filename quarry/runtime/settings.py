"""Settings shared by every Quarry process, read from QUARRY_* environment variables.

`quarry up` passes the same settings to every child through the environment, so a
process started by hand with `quarry serve SERVICE` behaves the same way. Every
default works on one machine with nothing installed beside Quarry.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "QUARRY_"
# osquery's name for the enroll request's secret key, when --tls_enroll_override is not set.
DEFAULT_ENROLL_SECRET_KEY = "enroll_secret"

# Offsets from --port-base, so a test can run a whole cluster on free ports.
PORT_OFFSETS = {
    "gateway_port": 0,
    "enroll_port": 1,
    "config_port": 2,
    "distributed_port": 3,
    "ingest_port": 4,
    "ingest_zmq_port": 5,
    "api_port": 6,
    "detection_port": 7,
    "metrics_port_base": 10,
}


@dataclass(frozen=True)
class Settings:
    """Everything a Quarry process needs to know; one instance per process."""

    # Every file and folder in it, and the setting that moves each: quarry/state/directory.py.
    state_dir: Path = Path(".quarry")
    bind_host: str = "127.0.0.1"
    # Host name osquery uses to reach the gateway; goes into the certificate and flags.
    public_host: str = "localhost"

    gateway_port: int = 8443
    gateway_workers: int = 1
    tls_cert: str = ""  # empty: generate a local CA and server certificate
    tls_key: str = ""
    tls_ca: str = ""  # the CA osquery should pin, when tls_cert is given

    enroll_port: int = 50051
    config_port: int = 50052
    distributed_port: int = 50053
    ingest_port: int = 50054
    ingest_zmq_port: int = 50055
    # The REST API (docs/api.md): HTTPS with the gateway's certificate, never osquery's port.
    api_port: int = 8444
    # The detection service (docs/detections.md): gRPC for `quarry detection`.
    detection_port: int = 50056
    # Each process serves /metrics on metrics_port_base + its METRICS_OFFSETS entry.
    metrics_port_base: int = 9400
    # /livez on that port answers 503 once the process's event loop has not turned for this
    # long (quarry/runtime/loop_watch.py): what a liveness probe restarts a wedged process on.
    liveness_window_s: float = 5.0

    # Where each gateway finds the services (host:port); empty means bind_host:port.
    enroll_addr: str = ""
    config_addr: str = ""
    distributed_addr: str = ""
    ingest_zmq_addrs: str = ""  # comma-separated tcp:// endpoints of ingest replicas
    ingest_addr: str = ""
    detection_addr: str = ""

    # Detections (docs/detections.md). A rule's window ends this many seconds before now,
    # so every row ClickHouse stamped before the end is visible when the rule runs.
    detection_settle_s: int = 10
    # At most this much arrival time per run: after an outage the engine catches up in steps.
    detection_max_window_s: int = 3600
    # Where alerts go: Alertmanager's base URL (http://host:9093), and webhooks
    # (comma-separated URLs), each sent every alert's firing and resolved events.
    detection_alertmanager_url: str = ""
    detection_webhook_urls: str = ""
    # Open alerts are posted to Alertmanager again this often (it resolves what it stops
    # hearing about); a failed delivery is retried with backoff up to the maximum.
    detection_repost_s: float = 60.0
    detection_retry_base_s: float = 1.0
    detection_retry_max_s: float = 300.0

    # Shared enroll secret; empty: read or create state_dir/enroll_secret.
    enroll_secret: str = ""
    enroll_secret_file: str = ""
    # Body keys (and URI parameters) that may hold the secret, comma-separated: the names
    # hosts give osquery's --tls_enroll_override. osquery's default, enroll_secret, is always
    # accepted too, so hosts with and without the override enroll together.
    enroll_secret_key: str = DEFAULT_ENROLL_SECRET_KEY
    # What makes two enrollments the same machine: system_info.uuid (the hardware UUID),
    # hardware_serial (system_info.hardware_serial) or host_identifier. A host without the
    # chosen fact falls back to its host_identifier.
    node_identity: str = "system_info.uuid"
    # Clone detection: an identity enrolling this many times within the window, while its
    # previous keys are still in use, is a suspected clone; further enrollments of it wait
    # for the cooldown (the current key keeps working, so the real host is not locked out).
    enroll_clone_window_s: int = 600
    enroll_clone_threshold: int = 3
    enroll_cooldown_s: int = 60

    # TLS client certificates: with a CA here the gateway asks every client for a
    # certificate signed by it (required when tls_client_cert_required) and passes the
    # verified identity to enrollment.
    tls_client_ca: str = ""
    tls_client_cert_required: bool = False
    # Use the certificate as the node's identity: "" (no), subject, san or fingerprint.
    enroll_client_cert_identity: str = ""
    # Enroll a node that presents a verified certificate even without an enroll secret.
    enroll_secret_optional_with_client_cert: bool = False

    # ClickHouse server URL, e.g. clickhouse://default:@127.0.0.1:9000/quarry.
    # Empty: embedded ClickHouse (chdb) under state_dir/chdb.
    clickhouse_url: str = ""

    # Log path: how long the gateway waits for ingest to confirm a batch.
    log_ack_timeout_s: float = 10.0
    # Replay into ClickHouse: insert once this many rows wait, or once this many seconds have
    # passed since the last insert began (sooner when an analyst's query waits for them).
    # Each insert is a part ClickHouse must merge: one a second per table keeps its CPU low.
    ingest_flush_rows: int = 50_000
    ingest_flush_interval_s: float = 1.0
    # Ingest spool (batches are acked once fsynced here): refuse new batches above this many
    # unreplayed bytes, keep replayed segments this long (the de-duplication window), rotate
    # segment files at this size.
    ingest_spool_max_bytes: int = 1 << 30
    ingest_spool_retention_s: float = 3600.0
    # A node's recent line identities are forgotten after this long without a batch from it
    # (docs/adr/0012-line-level-exactly-once.md).
    ingest_line_window_s: float = 7 * 86400.0
    ingest_spool_segment_bytes: int = 64 << 20

    # Days each log table keeps its rows (0: for ever): TTL on modern ClickHouse, and
    # partition drops on 18.16.
    retention_results_days: int = 30
    retention_status_logs_days: int = 30
    retention_distributed_results_days: int = 90
    retention_distributed_status_days: int = 90
    retention_raw_batches_days: int = 7
    # Raw answers to scheduled host queries; the software inventory's first and last seen
    # (quarry.software) are kept apart, for ever.
    retention_host_query_rows_days: int = 30
    retention_host_query_status_days: int = 30
    retention_alerts_days: int = 365
    # Keep every batch as received in quarry.raw_batches too, for forensic replay. Off by
    # default: it roughly doubles what ClickHouse stores.
    ingest_keep_raw_batches: bool = False

    # Check-in writes (last seen, deliveries) are batched this long by the gateway.
    checkin_flush_interval_s: float = 1.0
    # The enroll service announces the last-seen times that moved this often (one SEEN
    # event on WatchNodes), so quarry.hosts follows them without a write per check-in.
    node_seen_interval_s: float = 60.0
    # Whether ingest keeps quarry.hosts current from the enroll and config feeds.
    ingest_hosts_table: bool = True
    # distributed read answer `accelerate` (seconds) while a node has a live query.
    distributed_accelerate_s: int = 60
    live_query_ttl_s: int = 3600
    # Scheduled host queries (docs/inventory.md, ADR 0019): each host answers the vitals
    # group once per this many seconds, and the software inventory once per that many;
    # 0 turns a group off.
    host_vitals_interval_s: int = 3600
    host_software_interval_s: int = 86400

    log_level: str = "INFO"
    extra: dict[str, str] = field(default_factory=dict)

    # Admin API tokens (docs/security.md), read by quarry/access/admin_auth.py: the root admin token
    # every process accepts (empty: state_dir/admin_token, created by the enroll service) and
    # the token Quarry's processes present to each other (empty: state_dir/service_token).
    admin_token: str = ""
    service_token: str = ""

    # Hardening: docs/security.md explains each limit.
    # Request bodies as received (compressed when gzip), per endpoint: Fleet's defaults.
    request_max_bytes_log: int = 10 << 20
    request_max_bytes_distributed_write: int = 5 << 20
    request_max_bytes_other: int = 1 << 20  # enroll, config, distributed read
    # A gzip body is refused once it inflates past this, while it is still arriving.
    request_max_decompressed_bytes: int = 64 << 20
    # JSON shape: values in one body (checked before parsing), characters in one string.
    request_max_json_values: int = 2_000_000
    request_max_string_chars: int = 4 << 20
    # A client must deliver its whole request head, and then its body, within these.
    request_head_timeout_s: float = 30.0
    request_body_timeout_s: float = 30.0
    # TLS: lowest version (1.2 or 1.3) and the TLS 1.2 cipher list; osquery's by default.
    tls_min_version: str = "1.2"
    tls_ciphers: str = (
        "ECDH+AESGCM:DH+AESGCM:ECDH+AES256:DH+AES256:ECDH+AES128:DH+AES:ECDH+3DES:DH+3DES:"
        "RSA+AESGCM:RSA+AES:RSA+3DES:!aNULL:!MD5:!CBC:!SHA:!DSS:!kDHE:!kRSA"
    )
    # Enrollment token buckets: sustained attempts per second and burst, per source
    # address (every attempt) and per valid secret; a rate of 0 turns a limit off.
    # Loopback sources are exempt (the machine itself: tests, benchmarks).
    enroll_rate_per_address_s: float = 5.0
    enroll_burst_per_address: int = 300
    enroll_rate_per_secret_s: float = 100.0
    enroll_burst_per_secret: int = 5000

    # Service-to-service encryption (docs/security.md, "Service-to-service encryption").
    # Off by default (`quarry up` talks over loopback); the Kubernetes manifests turn both on.
    # gRPC over mutual TLS: every server asks each client for a certificate signed by
    # internal_tls_ca, every channel (the CLI's too) presents internal_tls_cert. Empty paths
    # mean state_dir/internal-tls/{ca.pem,quarry-internal.pem,quarry-internal.key}, made by
    # `quarry tls internal init` (and by `quarry up` when missing).
    internal_tls: bool = False
    internal_tls_cert: str = ""
    internal_tls_key: str = ""
    internal_tls_ca: str = ""
    # The name channels check a server's certificate against; empty: the host of each
    # address (which the certificate's SANs must then list).
    internal_tls_server_name: str = ""
    # ZeroMQ CURVE on the log path: the ingest ROUTER is the CURVE server and accepts only
    # the gateway keys in zmq_curve_dir/authorized_clients/. Empty dir: state_dir/zmq-curve,
    # made by `quarry curve init` (and by `quarry up` when missing).
    zmq_curve: bool = False
    zmq_curve_dir: str = ""

    # Shared state (docs/deploy.md, ADR 0009): a postgresql:// URL makes the enroll, config
    # and distributed services keep their state there, so any number of replicas of each
    # share it; empty: one SQLite file per service in state_dir.
    database_url: str = ""

    # ClickHouse cluster (docs/deploy.md, "ClickHouse cluster"): the cluster's name in the
    # servers' remote_servers config. Set, the schema is ReplicatedMergeTree `<table>_local`
    # tables with Distributed tables under the analysts' names, on every host of the cluster,
    # and clickhouse_url may list several hosts (h1:9000,h2:9000) for ingest to fail over
    # between. Empty: one server, plain MergeTree tables.
    clickhouse_cluster: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Defaults, overridden by QUARRY_<FIELD> variables (QUARRY_PORT_BASE shifts all ports)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        base = env.get(ENV_PREFIX + "PORT_BASE")
        if base:
            values.update({name: int(base) + off for name, off in PORT_OFFSETS.items()})
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or f.name == "extra":
                continue
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}{f.name.upper()} must be a {f.type}, got {raw!r}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The QUARRY_* variables that reproduce these settings in a child process."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            out[ENV_PREFIX + f.name.upper()] = str(getattr(self, f.name))
        return out

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # Addresses, with the bind host as the default for a one-machine cluster.
    def service_addr(self, service: str) -> str:
        explicit = getattr(self, f"{service}_addr")
        return explicit or f"{self.bind_host}:{getattr(self, f'{service}_port')}"

    def enroll_secret_keys(self) -> tuple[str, ...]:
        """Where an enroll request's secret may be, in the order they are looked at."""
        configured = (name.strip() for name in self.enroll_secret_key.split(","))
        return tuple(dict.fromkeys([*filter(None, configured), DEFAULT_ENROLL_SECRET_KEY]))

    def zmq_endpoints(self) -> list[str]:
        if self.ingest_zmq_addrs:
            return [a.strip() for a in self.ingest_zmq_addrs.split(",") if a.strip()]
        return [f"tcp://{self.bind_host}:{self.ingest_zmq_port}"]

    def metrics_port(self, service: str) -> int:
        return self.metrics_port_base + METRICS_OFFSETS[service]

    def path(self, *parts: str) -> Path:
        """A path under the state directory, created on first use."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir.joinpath(*parts)


# Start order matters: the gateway comes last, once what it watches is up.
SERVICES = ("enroll", "config", "distributed", "ingest", "gateway")
# Every process `quarry serve` runs and `quarry up` starts, in start order: the services, then
# the REST API, a client of them all (docs/adr/0014-rest-api-over-grpc.md), and the detection
# service, which reads the logs through ingest (docs/adr/0021-detections-on-arrival.md).
PROCESSES = (*SERVICES, "api", "detection")
# Each process's /metrics port, from metrics_port_base: the services take 0-4,
# `quarry up --with-prometheus` listens on 5, then the REST API and the detection service.
METRICS_OFFSETS = {**{name: index for index, name in enumerate(SERVICES)}, "api": 6, "detection": 7}


def _convert(type_name: object, raw: str) -> object:
    kind = str(type_name)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        return raw.lower() in ("1", "true", "yes", "on")
    if kind == "Path":
        return Path(raw)
    return raw
