"""The DDL the stores ran before their tables were described once (quarry/state/table_schema.py),
copied from Quarry as of commit 74da9fe: the reference tests/test_table_schema.py checks
the rendered tables against, so databases made by earlier versions keep matching.

On a fresh SQLite file, migration 1 of nodes, config versions and campaigns created the
first release's table and then added the later columns by ALTER TABLE (the step that
upgrades files made before migrations were versioned); REFERENCE replays exactly that.
"""

from __future__ import annotations

HISTORY_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (component, version)
)
"""
CHANGES_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY,
    feed TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_feed ON changes (feed, seq);
CREATE INDEX IF NOT EXISTS changes_by_time ON changes (created_at_ms)
"""
ENROLL_SQLITE = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_key TEXT NOT NULL UNIQUE,
    host_identifier TEXT NOT NULL,
    hardware_uuid TEXT NOT NULL,
    platform_type TEXT NOT NULL,
    platform TEXT NOT NULL,
    osquery_version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    host_details_json TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enroll_secrets (
    secret_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value_sha256 TEXT UNIQUE,
    tags_json TEXT NOT NULL,
    secret_group TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    max_enrollments INTEGER NOT NULL,
    enrollments INTEGER NOT NULL DEFAULT 0,
    last_used_at INTEGER NOT NULL DEFAULT 0,
    one_time INTEGER NOT NULL,
    requires_approval INTEGER NOT NULL,
    allows_reenrollment_after_revocation INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS enroll_secrets_by_name ON enroll_secrets (name);
-- One row per successful enrollment, kept for the clone window: cooldown and clone report.
CREATE TABLE IF NOT EXISTS enrollments (
    identity TEXT NOT NULL,
    node_id TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    -- none (first enrollment, or after a revocation), used or unused: the replaced key.
    replaced_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS enrollments_by_identity ON enrollments (identity, enrolled_at);
CREATE INDEX IF NOT EXISTS enrollments_by_time ON enrollments (enrolled_at);
"""
ADDED_NODE_COLUMNS = {
    "identity": "TEXT NOT NULL DEFAULT ''",
    "hardware_serial": "TEXT NOT NULL DEFAULT ''",
    "tags_json": "TEXT NOT NULL DEFAULT '[]'",
    "node_group": "TEXT NOT NULL DEFAULT ''",
    "secret_id": "TEXT NOT NULL DEFAULT ''",
    "secret_name": "TEXT NOT NULL DEFAULT ''",
    "pending": "INTEGER NOT NULL DEFAULT 0",
    "approved_at": "INTEGER NOT NULL DEFAULT 0",
    "first_enrolled_at": "INTEGER NOT NULL DEFAULT 0",
    "client_certificate_json": "TEXT NOT NULL DEFAULT ''",
}
ENROLL_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_key TEXT NOT NULL UNIQUE,
    host_identifier TEXT NOT NULL,
    hardware_uuid TEXT NOT NULL,
    platform_type TEXT NOT NULL,
    platform TEXT NOT NULL,
    osquery_version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    host_details_json TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    revision BIGINT NOT NULL,
    identity TEXT NOT NULL DEFAULT '',
    hardware_serial TEXT NOT NULL DEFAULT '',
    tags_json TEXT NOT NULL DEFAULT '[]',
    node_group TEXT NOT NULL DEFAULT '',
    secret_id TEXT NOT NULL DEFAULT '',
    secret_name TEXT NOT NULL DEFAULT '',
    pending BIGINT NOT NULL DEFAULT 0,
    approved_at BIGINT NOT NULL DEFAULT 0,
    first_enrolled_at BIGINT NOT NULL DEFAULT 0,
    client_certificate_json TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS enroll_secrets (
    rowid BIGSERIAL,
    secret_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value_sha256 TEXT UNIQUE,
    tags_json TEXT NOT NULL,
    secret_group TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_enrollments BIGINT NOT NULL,
    enrollments BIGINT NOT NULL DEFAULT 0,
    last_used_at BIGINT NOT NULL DEFAULT 0,
    one_time BIGINT NOT NULL,
    requires_approval BIGINT NOT NULL,
    allows_reenrollment_after_revocation BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS enroll_secrets_by_name ON enroll_secrets (name);
CREATE TABLE IF NOT EXISTS enrollments (
    identity TEXT NOT NULL,
    node_id TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    replaced_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS enrollments_by_identity ON enrollments (identity, enrolled_at);
CREATE INDEX IF NOT EXISTS enrollments_by_time ON enrollments (enrolled_at)
"""
# Migration 3: the machines each secret counted (a quota counts machines).
SECRET_MACHINES = """
CREATE TABLE IF NOT EXISTS secret_machines (
    secret_id TEXT NOT NULL,
    identity TEXT NOT NULL,
    first_enrolled_at INTEGER NOT NULL,
    PRIMARY KEY (secret_id, identity)
);
INSERT INTO secret_machines (secret_id, identity, first_enrolled_at)
SELECT secret_id, identity, MIN(first_enrolled_at) FROM nodes
WHERE secret_id <> '' AND identity <> '' GROUP BY secret_id, identity
"""
# Migration 4: each node's OS version (the Python step backfills it from host_details_json).
NODE_OS_VERSION = "ALTER TABLE nodes ADD COLUMN os_version TEXT NOT NULL DEFAULT ''"
NODE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS nodes_by_identity ON nodes (identity, enrolled_at);"
    " CREATE INDEX IF NOT EXISTS nodes_by_revision ON nodes (revision)"
)
TOKENS_SQLITE = """
CREATE TABLE IF NOT EXISTS admin_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS admin_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    token_name TEXT NOT NULL,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    outcome TEXT NOT NULL,
    summary TEXT NOT NULL,
    service TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_audit_at ON admin_audit (at_ms);
"""
TOKENS_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS admin_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS admin_audit (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    token_name TEXT NOT NULL,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    outcome TEXT NOT NULL,
    summary TEXT NOT NULL,
    service TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_audit_at ON admin_audit (at_ms)
"""
TOKENS_2_SQLITE = """
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN last_used_at INTEGER NOT NULL DEFAULT 0
"""
TOKENS_2_POSTGRESQL = """
ALTER TABLE admin_tokens ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN last_used_at BIGINT NOT NULL DEFAULT 0
"""
CONFIG_SQLITE = """
CREATE TABLE IF NOT EXISTS config_versions (
    version INTEGER PRIMARY KEY,
    config_json TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS live_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    candidate_version INTEGER NOT NULL,
    percent INTEGER NOT NULL,
    node_ids_json TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    author TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_members (
    label TEXT NOT NULL,
    node_id TEXT NOT NULL,
    PRIMARY KEY (label, node_id)
);
CREATE TABLE IF NOT EXISTS config_fetches (
    node_id TEXT PRIMARY KEY,
    sha1 TEXT NOT NULL,
    version INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL
);
"""
ADDED_VERSION_COLUMNS = {
    "state_json": "TEXT NOT NULL DEFAULT ''",
    "comment": "TEXT NOT NULL DEFAULT ''",
}
CONFIG_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS config_versions (
    version BIGINT PRIMARY KEY,
    config_json TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    state_json TEXT NOT NULL DEFAULT '',
    comment TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS live_version (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    candidate_version BIGINT NOT NULL,
    percent BIGINT NOT NULL,
    node_ids_json TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    author TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS label_members (
    label TEXT NOT NULL,
    node_id TEXT NOT NULL,
    PRIMARY KEY (label, node_id)
);
CREATE TABLE IF NOT EXISTS config_fetches (
    node_id TEXT PRIMARY KEY,
    sha1 TEXT NOT NULL,
    version BIGINT NOT NULL,
    fetched_at BIGINT NOT NULL
)
"""
DISTRIBUTED_SQLITE = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY,
    sql TEXT NOT NULL,
    target_all INTEGER NOT NULL,
    node_ids_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    author TEXT NOT NULL,
    -- When CLOSE was announced (cancel or expiry); 0 while it has not been.
    closed_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS campaigns_to_close ON campaigns (closed_at, expires_at);
CREATE TABLE IF NOT EXISTS host_states (
    campaign_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    host_identifier TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    row_count INTEGER NOT NULL DEFAULT 0,
    wall_time_ms INTEGER NOT NULL DEFAULT 0,
    user_time INTEGER NOT NULL DEFAULT 0,
    system_time INTEGER NOT NULL DEFAULT 0,
    memory INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER NOT NULL DEFAULT 0,
    answered_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, node_id)
);
CREATE INDEX IF NOT EXISTS host_states_by_state ON host_states (campaign_id, state);
"""
ADDED_CAMPAIGN_COLUMNS = dict(
    (
        ("targeting_json", "TEXT NOT NULL DEFAULT '{}'"),
        ("discovery_sql", "TEXT NOT NULL DEFAULT ''"),
        ("open_targeting", "INTEGER NOT NULL DEFAULT 0"),
        ("targeted", "INTEGER NOT NULL DEFAULT 0"),
    )
)
DISTRIBUTED_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id TEXT PRIMARY KEY,
    sql TEXT NOT NULL,
    target_all BIGINT NOT NULL,
    node_ids_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    cancelled BIGINT NOT NULL DEFAULT 0,
    author TEXT NOT NULL,
    closed_at BIGINT NOT NULL DEFAULT 0,
    targeting_json TEXT NOT NULL DEFAULT '{}',
    discovery_sql TEXT NOT NULL DEFAULT '',
    open_targeting BIGINT NOT NULL DEFAULT 0,
    targeted BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS campaigns_to_close ON campaigns (closed_at, expires_at);
CREATE TABLE IF NOT EXISTS host_states (
    campaign_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    host_identifier TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    status BIGINT NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    row_count BIGINT NOT NULL DEFAULT 0,
    wall_time_ms BIGINT NOT NULL DEFAULT 0,
    user_time BIGINT NOT NULL DEFAULT 0,
    system_time BIGINT NOT NULL DEFAULT 0,
    memory BIGINT NOT NULL DEFAULT 0,
    delivered_at BIGINT NOT NULL DEFAULT 0,
    answered_at BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, node_id)
);
CREATE INDEX IF NOT EXISTS host_states_by_state ON host_states (campaign_id, state)
"""


def _alter(table: str, columns: dict[str, str]) -> str:
    return ";".join(f"ALTER TABLE {table} ADD COLUMN {n} {d}" for n, d in columns.items())


# service -> its components in the order they were migrated, each a list of
# (version, name, SQLite script or None, PostgreSQL script or None).
REFERENCE: dict[str, list[tuple[str, list[tuple[int, str, str | None, str | None]]]]] = {}
for _service in ("enroll", "config", "distributed", "detection"):
    REFERENCE[_service] = [
        (f"{_service}.changes", [(1, "change outbox", None, CHANGES_POSTGRESQL)])
    ]
REFERENCE["enroll"] += [
    (
        "enroll.nodes",
        [
            (
                1,
                "nodes, enroll secrets, enrollments",
                ENROLL_SQLITE + ";" + _alter("nodes", ADDED_NODE_COLUMNS),
                ENROLL_POSTGRESQL,
            ),
            (2, "nodes by identity and by revision", NODE_INDEXES, NODE_INDEXES),
            (
                3,
                "the machines enrolled with each secret",
                SECRET_MACHINES,
                SECRET_MACHINES.replace("INTEGER", "BIGINT"),
            ),
            (
                4,
                "each node's OS version, from the host details it enrolled with",
                NODE_OS_VERSION,
                NODE_OS_VERSION,
            ),
        ],
    ),
    (
        "enroll.admin_tokens",
        [
            (1, "admin tokens and audit log", TOKENS_SQLITE, TOKENS_POSTGRESQL),
            (2, "admin token expiry and last use", TOKENS_2_SQLITE, TOKENS_2_POSTGRESQL),
        ],
    ),
]
REFERENCE["config"] += [
    (
        "config",
        [
            (
                1,
                "state versions, live pointer, rollout, labels, fetches",
                CONFIG_SQLITE + ";" + _alter("config_versions", ADDED_VERSION_COLUMNS),
                CONFIG_POSTGRESQL,
            )
        ],
    )
]
REFERENCE["distributed"] += [
    (
        "distributed",
        [
            (
                1,
                "campaigns and host states",
                DISTRIBUTED_SQLITE + ";" + _alter("campaigns", ADDED_CAMPAIGN_COLUMNS),
                DISTRIBUTED_POSTGRESQL,
            )
        ],
    )
]

# The detection service's tables as its first release created them.
DETECTION_SQLITE = """
CREATE TABLE IF NOT EXISTS rule_state (
    rule TEXT PRIMARY KEY,
    watermark INTEGER NOT NULL,
    last_run_at INTEGER NOT NULL DEFAULT 0,
    last_hits INTEGER NOT NULL DEFAULT 0,
    total_hits INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    host_identifier TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    hits INTEGER NOT NULL,
    resolved_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (status, rule, dedup_key);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_at, next_attempt_at);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    outbox_id INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attempts_by_entry ON delivery_attempts (outbox_id)
"""
DETECTION_POSTGRESQL = """
CREATE TABLE IF NOT EXISTS rule_state (
    rule TEXT PRIMARY KEY,
    watermark BIGINT NOT NULL,
    last_run_at BIGINT NOT NULL DEFAULT 0,
    last_hits BIGINT NOT NULL DEFAULT 0,
    total_hits BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    host_identifier TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    hits BIGINT NOT NULL,
    resolved_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (status, rule, dedup_key);
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    delivered_at BIGINT NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_at, next_attempt_at);
CREATE TABLE IF NOT EXISTS delivery_attempts (
    rowid BIGSERIAL,
    outbox_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attempts_by_entry ON delivery_attempts (outbox_id)
"""
REFERENCE["detection"] += [
    (
        "detection",
        [(1, "rule state, alerts, delivery outbox", DETECTION_SQLITE, DETECTION_POSTGRESQL)],
    ),
]
