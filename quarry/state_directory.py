"""The state directory: every file and folder Quarry keeps in it, and what moves each.

QUARRY_STATE_DIR (`--state-dir`, default ./.quarry) holds what one machine's processes
keep between starts. This docstring is the one map of it; every process and command finds
its files through the functions below, never by naming a path itself.

    path                    what, made by                               moved or replaced by
    tls/ca.pem, ca.key      the gateway's local CA (osquery pins ca.pem),  QUARRY_TLS_CERT,
    tls/server.pem, .key    made at the first start of the gateway or      QUARRY_TLS_KEY,
                            `quarry up` (quarry/gateway_certificates.py)   QUARRY_TLS_CA
    enroll_secret           the shared enroll secret (0600), made by the   QUARRY_ENROLL_SECRET,
                            enroll service or `quarry up`                  QUARRY_ENROLL_SECRET_FILE
    admin_token             the root admin token (0600), written by the    QUARRY_ADMIN_TOKEN
                            enroll service at first start, read by the CLI
    service_token           the token Quarry's processes present to each   QUARRY_SERVICE_TOKEN
                            other, made by the first process needing it
    internal-tls/           the internal CA and `quarry-internal` cert     QUARRY_INTERNAL_TLS_CA,
                            (gRPC mutual TLS), `quarry tls internal init`  _CERT, _KEY (each file)
    zmq-curve/              ZeroMQ CURVE keys of the log path,             QUARRY_ZMQ_CURVE_DIR
                            `quarry curve init` (quarry/zmq_curve.py)
    carves/                 the carve index (index.sqlite3) and one        QUARRY_CARVE_DIR
                            <session>.carve file per carve, written by
                            the gateway, read by `quarry carve`
    enroll.sqlite3,         each stateful service's SQLite database, and   QUARRY_DATABASE_URL
    config.sqlite3,         its schema migrations (quarry/state_database.py, (PostgreSQL instead)
    distributed.sqlite3     quarry/service_database.py)
    spool/                  ingest's fsynced spool of acknowledged log     (none)
                            batches (ingest_service/spool.py)
    chdb/                   embedded ClickHouse, owned by ingest           QUARRY_CLICKHOUSE_URL
                                                                           (a server instead)
    gateway-metrics/        Prometheus multiprocess files, with            (none)
                            QUARRY_GATEWAY_WORKERS > 1
    quarry-up.pids          the processes of the running `quarry up`       (none)
                            (quarry/up_processes.py)
    osquery.flags           the flags that connect a node, by `quarry up`  (none)
    prometheus/             `quarry up --with-prometheus`: its config and  (none)
                            data (quarry/local_prometheus.py)

Layering (docs/architecture.md): this module sits below the services and knows only the
settings, so the CLI (quarry/) and every service find the same files without importing
one another. Functions named `ensure_*` make what must exist before a process starts.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from quarry.settings import Settings

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
    file may be named elsewhere by its own setting (quarry/internal_tls.py)."""
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


def osquery_flags_file(settings: Settings) -> Path:
    return settings.path(OSQUERY_FLAGS_FILE)


def prometheus_dir(settings: Settings) -> Path:
    return settings.path(PROMETHEUS_DIR)
