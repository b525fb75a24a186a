"""The state directory: every file and folder Quarry keeps in it, and what moves each.

QUARRY_STATE_DIR (`--state-dir`, default ./.quarry) holds what one machine's processes
keep between starts. This docstring is the one map of it; every process and command finds
its files through the functions below, never by naming a path itself.

    tls/                    the gateway's local CA (ca.pem, which osquery pins, and ca.key)
                            and server certificate (server.pem, server.key), made at the
                            gateway's or `quarry up`'s first start
                            (quarry/encryption/gateway_certificates.py)
                            -> QUARRY_TLS_CERT, QUARRY_TLS_KEY, QUARRY_TLS_CA name others
    enroll_secret           the shared enroll secret (0600), made by the enroll service or
                            `quarry up` (ensure_enroll_secret_file)
                            -> QUARRY_ENROLL_SECRET (no file), QUARRY_ENROLL_SECRET_FILE
    admin_token             the root admin token (0600), written by the enroll service at
                            its first start, read by the CLI (quarry/access/admin_auth.py)
                            -> QUARRY_ADMIN_TOKEN
    service_token           the token Quarry's processes present to each other, made by the
                            first process that needs it -> QUARRY_SERVICE_TOKEN
    internal-tls/           the internal CA and the `quarry-internal` certificate (gRPC
                            mutual TLS), by `quarry tls internal init` or `quarry up`
                            (quarry/encryption/internal_tls.py)
                            -> QUARRY_INTERNAL_TLS_CA, _CERT, _KEY (each file on its own)
    zmq-curve/              ZeroMQ CURVE keys of the log path, by `quarry curve init` or
                            `quarry up` (quarry/encryption/zmq_curve.py) -> QUARRY_ZMQ_CURVE_DIR
    carves/                 the carve index (index.sqlite3) and one <session>.carve file
                            per carve, written by the gateway, read by the
                            distributed service (for `quarry carve` and the API)
                            (quarry/state/carve_store.py) -> QUARRY_CARVE_DIR
    <service>.sqlite3       enroll, config and distributed state with its schema
                            migrations (quarry/state/database.py,
                            quarry/state/service_database.py) -> QUARRY_DATABASE_URL (PostgreSQL)
    spool/                  ingest's fsynced spool of acknowledged log batches
                            (ingest_service/spool.py)
    chdb/                   embedded ClickHouse, owned by the ingest process
                            -> QUARRY_CLICKHOUSE_URL (a server instead)
    gateway-metrics/        Prometheus multiprocess files, with QUARRY_GATEWAY_WORKERS > 1
    quarry-up.pids          the processes of the running `quarry up` (quarry/cli/up_processes.py)
    quarry-up.lock          held (flock) by the running `quarry up`, so a second one on the
                            same state directory is refused even while the first starts
    cluster.json            where the `quarry up` on this directory listens (its port base,
                            ports, hosts), so admin commands find it with --state-dir alone
                            and a `quarry up` started again listens there
                            (quarry/cli/cluster_record.py)
    osquery.flags           the flags that connect a node, written by `quarry up`
    prometheus/             `quarry up --with-prometheus`: its configuration and data
                            (quarry/cli/local_prometheus.py)

Layering (docs/architecture.md): this module sits below the services and knows only the
settings, so the CLI (quarry/) and every service find the same files without importing
one another. What must exist before a process starts is made by `ensure_enroll_secret_file`
here and, for key material, by the modules named above (`tls_files`, which makes the local
CA, `ensure_shared_certificate`, `ensure_curve_keys`); `quarry up` calls them before it
starts any child, so no two children race to write them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from quarry.runtime.settings import Settings

TLS_DIR = "tls"
ENROLL_SECRET_FILE = "enroll_secret"
ADMIN_TOKEN_FILE = "admin_token"
SERVICE_TOKEN_FILE = "service_token"
INTERNAL_TLS_DIR = "internal-tls"
ZMQ_CURVE_DIR = "zmq-curve"
CARVE_DIR = "carves"
CARVE_DIR_ENV = "QUARRY_CARVE_DIR"
SPOOL_DIR = "spool"
CHDB_DIR = "chdb"
GATEWAY_METRICS_DIR = "gateway-metrics"
UP_PID_FILE = "quarry-up.pids"
UP_LOCK_FILE = "quarry-up.lock"
CLUSTER_FILE = "cluster.json"
OSQUERY_FLAGS_FILE = "osquery.flags"
PROMETHEUS_DIR = "prometheus"


# --- the gateway's local certificates -------------------------------------------------


def gateway_tls_dir(settings: Settings) -> Path:
    """The local CA and server certificate, when QUARRY_TLS_CERT/KEY name none."""
    return settings.path(TLS_DIR)


# --- secrets and tokens ---------------------------------------------------------------


def enroll_secret_file(settings: Settings) -> Path:
    """Where the shared enroll secret is kept when it is not given in the environment."""
    if settings.enroll_secret_file:
        return Path(settings.enroll_secret_file)
    return settings.path(ENROLL_SECRET_FILE)


def ensure_enroll_secret_file(settings: Settings) -> Path:
    """Create the secret file with a random secret (mode 0600) unless one is configured."""
    path = enroll_secret_file(settings)
    if settings.enroll_secret or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once must not overwrite each other's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return path


def admin_token_file(settings: Settings) -> Path:
    """The root admin token's file (not created here: the CLI only reads it)."""
    return settings.state_dir / ADMIN_TOKEN_FILE


def service_token_file(settings: Settings) -> Path:
    return settings.path(SERVICE_TOKEN_FILE)


# --- service-to-service encryption ----------------------------------------------------


def internal_tls_dir(settings: Settings) -> Path:
    """Where `quarry tls internal init` keeps the internal CA and shared certificate; each
    file may be named elsewhere by its own setting (quarry/encryption/internal_tls.py)."""
    return settings.state_dir / INTERNAL_TLS_DIR


def zmq_curve_dir(settings: Settings) -> Path:
    if settings.zmq_curve_dir:
        return Path(settings.zmq_curve_dir)
    return settings.state_dir / ZMQ_CURVE_DIR


# --- data -----------------------------------------------------------------------------


def carve_dir(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The carve index and data files; QUARRY_CARVE_DIR moves them (docs/carving.md)."""
    env = os.environ if environ is None else environ
    return Path(env.get(CARVE_DIR_ENV) or settings.state_dir / CARVE_DIR)


def state_database_file(settings: Settings, service: str) -> Path:
    """A stateful service's SQLite database (when QUARRY_DATABASE_URL is empty)."""
    return settings.path(f"{service}.sqlite3")


def spool_dir(settings: Settings) -> Path:
    return settings.path(SPOOL_DIR)


def chdb_dir(settings: Settings) -> Path:
    """Embedded ClickHouse's data (when QUARRY_CLICKHOUSE_URL is empty)."""
    return settings.path(CHDB_DIR)


# --- processes on this machine --------------------------------------------------------


def gateway_metrics_dir(settings: Settings) -> Path:
    return settings.path(GATEWAY_METRICS_DIR)


def up_pid_file(settings: Settings) -> Path:
    return settings.path(UP_PID_FILE)


def up_lock_file(settings: Settings) -> Path:
    return settings.path(UP_LOCK_FILE)


def cluster_record_file(settings: Settings) -> Path:
    return settings.path(CLUSTER_FILE)


def osquery_flags_file(settings: Settings) -> Path:
    return settings.path(OSQUERY_FLAGS_FILE)


def prometheus_dir(settings: Settings) -> Path:
    return settings.path(PROMETHEUS_DIR)
