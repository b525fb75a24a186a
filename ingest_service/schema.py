"""The ClickHouse tables and views Quarry writes logs to, and keeping them current.

Every statement must run on Debian's ClickHouse 18.16 (no Map, no TTL, no LowCardinality
without an experimental setting) and on modern ClickHouse (chdb 26.9). Column values are
stored as two parallel arrays (names, values), which every version reads; modern servers
also get a `columns` Map alias so analysts can write `columns['pid']`. docs/analysts.md
documents each column and view for analysts; keep the two in step.

Tables are only ever extended: `apply_schema` creates what is missing and adds missing
columns to tables an older Quarry created, so rows already stored keep working. A table's
partition key and sort key are fixed when it is created; only new tables get the current ones.

On a ClickHouse cluster (QUARRY_CLICKHOUSE_CLUSTER) every host gets the same schema: each
table's rows live in `<table>_local` (ReplicatedMergeTree) and `<table>` is a Distributed
table over them, so analysts keep the names above (docs/adr/0010-clickhouse-cluster.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from quarry.runtime.settings import Settings

# mapFromArrays arrived in 23.3; TTL in 19.6. Before 23.3 Map was experimental or missing.
MODERN_MIN_VERSION = (23, 3)


# `pack_<pack>_<query>` split at the first `_` after `pack_`: pack names are usually
# written with `-` (osquery-monitoring, incident-response) while query names often hold
# `_` (osquery_info), so the first `_` is the likelier delimiter. log_rows.split_query_name
# does the same in Python; this SQL fills the columns for rows stored before they existed.
_PACK_REST = "substring(name, 6)"
_IS_PACK = f"substring(name, 1, 5) = 'pack_' AND position({_PACK_REST}, '_') > 0"
PACK_DEFAULT = f"if({_IS_PACK}, substring({_PACK_REST}, 1, position({_PACK_REST}, '_') - 1), '')"
QUERY_DEFAULT = f"if({_IS_PACK}, substring({_PACK_REST}, position({_PACK_REST}, '_') + 1), name)"

# Run one SQL statement and return its rows; each store passes its own.
RunSql = Callable[[str], Sequence[Sequence[Any]]]


def is_modern(version: str) -> bool:
    """Whether a server of this version (as `SELECT version()` prints it) has Map and TTL."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= MODERN_MIN_VERSION


def retention_days(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Days to keep each table's rows (QUARRY_RETENTION_<TABLE>_DAYS); 0 means for ever."""
    settings = Settings.from_env(environ)
    days = {table: getattr(settings, f"retention_{table}_days") for table in RETAINED_TABLE_NAMES}
    for table, value in days.items():
        if value < 0:
            raise ValueError(f"QUARRY_RETENTION_{table.upper()}_DAYS must not be negative")
    return days


# Columns


@dataclass(frozen=True)
class Column:
    """One column; `modern` columns exist only on servers with Map (they are aliases)."""

    name: str
    type: str
    default: str = ""
    alias: str = ""
    modern: bool = False

    def definition(self, modern_server: bool) -> str:
        column_type = self.type
        if not modern_server:
            column_type = column_type.replace("LowCardinality(String)", "String")
        if self.alias:
            return f"{self.name} {column_type} ALIAS {self.alias}"
        if self.default:
            return f"{self.name} {column_type} DEFAULT {self.default}"
        return f"{self.name} {column_type}"


TEXT = "LowCardinality(String)"  # plain String on 18.16
COLUMNS_MAP = Column(
    "columns",
    "Map(String, String)",
    alias="mapFromArrays(column_names, column_values)",
    modern=True,
)
DECORATIONS_MAP = Column(
    "decorations",
    "Map(String, String)",
    alias="mapFromArrays(decoration_names, decoration_values)",
    modern=True,
)
INGEST_COLUMNS = (
    Column("node_id", "String"),
    Column("received_at", "DateTime"),
    Column("batch_id", "String"),
)
# When ClickHouse wrote the row; retention (TTL) counts from here, so a batch whose
# received_at is old (replayed from a spool, or a test's fixed clock) is still kept N days.
STORED_AT = Column("stored_at", "DateTime", default="now()")
# How one query went on one host (a distributed write's status and stats): the columns of
# distributed_status and host_query_status. status is osquery's code: 0 when the query ran.
QUERY_OUTCOME_COLUMNS = (
    Column("status", "UInt32"),
    Column("message", "String"),
    Column("row_count", "UInt64"),
    Column("wall_time_ms", "UInt64"),
    Column("user_time", "UInt64"),
    Column("system_time", "UInt64"),
    Column("memory", "UInt64"),
)


@dataclass(frozen=True)
class Table:
    """One table; a log table by default (MergeTree by receive day, rows kept N days)."""

    name: str
    columns: tuple[Column, ...]
    order_by: str
    # The MergeTree family member and its arguments after the replicated ones.
    engine: str = "MergeTree"
    engine_arguments: str = ""
    partition_by: str = "toYYYYMMDD(received_at)"
    # Which shard a row belongs to when inserted through the Distributed table.
    sharding_key: str = "cityHash64(batch_id)"
    # Rows expire after QUARRY_RETENTION_<TABLE>_DAYS (TTL, or dropped partitions on 18.16).
    retained: bool = True

    def columns_for(self, modern: bool) -> list[Column]:
        return [column for column in self.columns if modern or not column.modern]


RESULTS = Table(
    "results",
    (
        Column("name", TEXT),
        Column("host_identifier", "String"),
        Column("unix_time", "DateTime"),
        Column("calendar_time", "String"),
        Column("action", TEXT),
        Column("column_names", "Array(String)"),
        Column("column_values", "Array(String)"),
        Column("decoration_names", "Array(String)"),
        Column("decoration_values", "Array(String)"),
        Column("epoch", "UInt64"),
        Column("counter", "UInt64"),
        Column("numerics", "UInt8"),
        *INGEST_COLUMNS,
        Column("pack", TEXT, default=PACK_DEFAULT),
        Column("query", TEXT, default=QUERY_DEFAULT),
        STORED_AT,
        COLUMNS_MAP,
        DECORATIONS_MAP,
    ),
    order_by="name, host_identifier, unix_time",
)
STATUS_LOGS = Table(
    "status_logs",
    (
        Column("host_identifier", "String"),
        Column("unix_time", "DateTime"),
        Column("calendar_time", "String"),
        Column("severity", "UInt8"),
        Column("filename", TEXT),
        Column("line", "UInt32"),
        Column("message", "String"),
        Column("version", TEXT),
        Column("decoration_names", "Array(String)"),
        Column("decoration_values", "Array(String)"),
        *INGEST_COLUMNS,
        STORED_AT,
        DECORATIONS_MAP,
    ),
    order_by="host_identifier, unix_time",
)
DISTRIBUTED_RESULTS = Table(
    "distributed_results",
    (
        Column("campaign_id", "String"),
        Column("host_identifier", "String"),
        Column("row_index", "UInt32"),
        Column("column_names", "Array(String)"),
        Column("column_values", "Array(String)"),
        *INGEST_COLUMNS,
        STORED_AT,
        COLUMNS_MAP,
    ),
    order_by="campaign_id, host_identifier, row_index",
)
DISTRIBUTED_STATUS = Table(
    "distributed_status",
    (
        Column("campaign_id", "String"),
        Column("host_identifier", "String"),
        *QUERY_OUTCOME_COLUMNS,
        *INGEST_COLUMNS,
        STORED_AT,
    ),
    order_by="campaign_id, host_identifier",
)
# Written only when QUARRY_INGEST_KEEP_RAW_BATCHES is on: each batch as the gateway got it.
RAW_BATCHES = Table(
    "raw_batches",
    (
        Column("kind", TEXT),
        Column("host_identifier", "String"),
        Column("campaign_id", "String"),
        Column("data_json", "String"),
        *INGEST_COLUMNS,
        STORED_AT,
    ),
    order_by="node_id, received_at",
)
# One row per node and change, written by ingest from the enroll and config services'
# feeds (ingest_service/host_inventory.py, docs/adr/0020-hosts-table.md). Replacing by
# `version`, so merges keep a node's latest row; several ingest replicas write the same
# rows, and readers take the latest per node (FINAL, or the hosts_current view).
HOSTS = Table(
    "hosts",
    (
        Column("node_id", "String"),
        Column("host_identifier", "String"),
        Column("hostname", "String"),
        Column("platform", TEXT),
        Column("os_version", TEXT),
        Column("osquery_version", TEXT),
        Column("tags", "Array(String)"),
        Column("labels", "Array(String)"),
        Column("secret_name", TEXT),
        Column("status", TEXT),
        Column("enrolled_at", "DateTime"),
        Column("last_seen", "DateTime"),
        Column("updated_at", "DateTime"),
        Column("version", "UInt64"),
    ),
    order_by="node_id",
    engine="ReplacingMergeTree",
    engine_arguments="version",
    partition_by="",
    sharding_key="cityHash64(node_id)",
    retained=False,
)
# Scheduled host queries (docs/inventory.md, ADR 0019): each answer's rows, and how each
# query went (an error, e.g. a table missing on the host's platform, is a status row).
HOST_QUERY_ROWS = Table(
    "host_query_rows",
    (
        Column("group_name", TEXT),
        Column("query_name", TEXT),
        Column("host_identifier", "String"),
        Column("collected_at", "DateTime"),
        Column("row_index", "UInt32"),
        Column("column_names", "Array(String)"),
        Column("column_values", "Array(String)"),
        *INGEST_COLUMNS,
        STORED_AT,
        COLUMNS_MAP,
    ),
    order_by="group_name, query_name, node_id, collected_at",
)
HOST_QUERY_STATUS = Table(
    "host_query_status",
    (
        Column("group_name", TEXT),
        Column("query_name", TEXT),
        Column("host_identifier", "String"),
        Column("collected_at", "DateTime"),
        # The cadence period answered (osquery_config/host_queries.py).
        Column("slot", "UInt64"),
        *QUERY_OUTCOME_COLUMNS,
        *INGEST_COLUMNS,
        STORED_AT,
    ),
    order_by="group_name, node_id, collected_at",
)
# What the detection service raised (docs/detections.md): one row per alert event (an
# alert opening, new hits while open, its resolution). batch_id is the event's identity,
# so a re-sent event is stored once (LogStore.StoreAlerts); node_id is empty and
# received_at is when the event happened.
ALERTS = Table(
    "alerts",
    (
        Column("alert_id", "String"),
        Column("rule", TEXT),
        Column("severity", TEXT),
        Column("event", TEXT),
        Column("dedup_key", "String"),
        Column("host_identifier", "String"),
        Column("first_seen", "DateTime"),
        Column("hits", "UInt64"),
        # Which stored rows matched: each a JSON object of the rule's answer row.
        Column("rows_json", "Array(String)"),
        *INGEST_COLUMNS,
        STORED_AT,
    ),
    order_by="rule, alert_id, received_at",
)
TABLES = (
    RESULTS,
    STATUS_LOGS,
    DISTRIBUTED_RESULTS,
    DISTRIBUTED_STATUS,
    RAW_BATCHES,
    HOST_QUERY_ROWS,
    HOST_QUERY_STATUS,
    ALERTS,
    HOSTS,
)
TABLE_NAMES = tuple(table.name for table in TABLES)
# The tables whose rows expire (QUARRY_RETENTION_<TABLE>_DAYS).
RETAINED_TABLE_NAMES = tuple(table.name for table in TABLES if table.retained)

# On a cluster, where a table's rows are stored on each host; the plain name is Distributed.
LOCAL_SUFFIX = "_local"


def local_table(name: str, cluster: str) -> str:
    """The table that holds `name`'s rows on one host: itself, or its `_local` on a cluster."""
    return f"{name}{LOCAL_SUFFIX}" if cluster else name


def ttl_clause(days: int) -> str:
    return f"TTL stored_at + toIntervalDay({days})" if days > 0 else ""


def create_table(database: str, table: Table, modern: bool, days: int, cluster: str = "") -> str:
    # Partitioned by the server's receive day, not the host's clock: a host with a wrong
    # clock must not create partitions for 1970 or 2099.
    columns = ",\n    ".join(column.definition(modern) for column in table.columns_for(modern))
    ttl = ttl_clause(days) if modern and table.retained else ""
    partition = f"PARTITION BY {table.partition_by}\n" if table.partition_by else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{local_table(table.name, cluster)} "
        f"(\n    {columns}\n)\n"
        f"ENGINE = {table_engine(database, table, cluster)}\n"
        f"{partition}"
        f"ORDER BY ({table.order_by})\n{ttl}"
    ).rstrip()


def table_engine(database: str, table: Table, cluster: str) -> str:
    if not cluster:
        arguments = f"({table.engine_arguments})" if table.engine_arguments else ""
        return f"{table.engine}{arguments}"
    # {shard} and {replica} are the macros of each host's server config.
    arguments = [f"'/clickhouse/tables/{{shard}}/{database}/{table.name}'", "'{replica}'"]
    if table.engine_arguments:
        arguments.append(table.engine_arguments)
    return f"Replicated{table.engine}({', '.join(arguments)})"


def create_distributed_table(database: str, table: Table, cluster: str) -> str:
    """The analysts' name for a table on a cluster: reads every shard's `_local` table.

    The sharding key matters only to inserts into the Distributed table (Quarry inserts
    into a host's local table); it keeps a batch's rows (a node's, for hosts) on one shard.
    """
    local = local_table(table.name, cluster)
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table.name} AS {database}.{local}\n"
        f"ENGINE = Distributed({cluster}, {database}, {local}, {table.sharding_key})"
    )


# The software inventory: one row per host, source, package and version with its first and
# last sighting, kept for ever whatever the raw answers' retention. An AggregatingMergeTree
# fed by a materialized view on each insert of software answers, so it holds one row per
# package once merged instead of one per daily answer (min and max states: inserting an
# answer twice changes nothing). 18.16 has AggregateFunction and MATERIALIZED VIEW ... TO.
SOFTWARE_SEEN = Table(
    "software_seen",
    (
        Column("node_id", "String"),
        Column("host_identifier", "String"),
        Column("source", "String"),
        Column("name", "String"),
        Column("version", "String"),
        Column("first_seen", "AggregateFunction(min, DateTime)"),
        Column("last_seen", "AggregateFunction(max, DateTime)"),
    ),
    order_by="name, version, source, node_id, host_identifier",
    engine="AggregatingMergeTree",
    partition_by="",
    sharding_key="cityHash64(node_id)",
    retained=False,
)
SOFTWARE_STATE = SOFTWARE_SEEN.name
SOFTWARE_FEED = "software_seen_feed"
SOFTWARE_KEY = "node_id, host_identifier, source, name, version"


def _row_value(column: str) -> str:
    """A result column's value from the parallel arrays ('' when the row lacks it)."""
    return f"column_values[indexOf(column_names, '{column}')]"


def software_statements(database: str, cluster: str = "") -> list[str]:
    """The inventory's table (its `_local` and Distributed on a cluster) and its feed."""
    state = local_table(SOFTWARE_STATE, cluster)
    columns = ",\n    ".join(f"{column.name} {column.type}" for column in SOFTWARE_SEEN.columns)
    statements = [
        f"""CREATE TABLE IF NOT EXISTS {database}.{state} (
    {columns}
)
ENGINE = {table_engine(database, SOFTWARE_SEEN, cluster)}
ORDER BY ({SOFTWARE_SEEN.order_by})""",
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{SOFTWARE_FEED}
TO {database}.{state} AS
SELECT node_id, host_identifier, query_name AS source,
    {_row_value("name")} AS name, {_row_value("version")} AS version,
    minState(collected_at) AS first_seen, maxState(collected_at) AS last_seen
FROM {database}.{local_table(HOST_QUERY_ROWS.name, cluster)}
WHERE group_name = 'software'
GROUP BY {SOFTWARE_KEY}""",
    ]
    if cluster:
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{SOFTWARE_STATE} AS {database}.{state}\n"
            f"ENGINE = Distributed({cluster}, {database}, {state}, cityHash64(node_id))"
        )
    return statements


# Views

# quarry.hosts read current: each node's row of the highest version. argMax over every
# column rather than FINAL, so the view is right on a cluster too, where replicas of
# ingest connected to different shards may each hold rows of one node.
HOSTS_CURRENT_COLUMNS = tuple(
    column.name for column in HOSTS.columns if column.name not in ("node_id", "version")
)


def hosts_current_view(database: str) -> str:
    # The inner query renames the columns, so an output alias never shadows a column an
    # aggregate reads (18.16 would take `version` for the alias `max(v) AS version`).
    names = HOSTS_CURRENT_COLUMNS
    renamed = ", ".join(f"{name} AS _{name}" for name in names)
    latest = ",\n    ".join(f"argMax(_{name}, _version) AS {name}" for name in names)
    return f"""CREATE VIEW IF NOT EXISTS {database}.hosts_current AS
SELECT node_id,
    {latest},
    max(_version) AS version
FROM (SELECT node_id, {renamed}, version AS _version FROM {database}.hosts)
GROUP BY node_id"""


def view_statements(database: str, modern: bool, cluster: str = "") -> list[str]:
    """Views analysts reach for; plain views, so they work on 18.16 and need no backfill.

    On a cluster they read the Distributed tables; a subquery over one must be GLOBAL IN,
    or a cluster of several shards refuses it (distributed_product_mode = 'deny').
    """
    columns_map = ",\n    mapFromArrays(column_names, column_values) AS columns" if modern else ""
    in_subquery = "GLOBAL IN" if cluster else "IN"
    return [
        f"""CREATE VIEW IF NOT EXISTS {database}.host_last_seen AS
SELECT host_identifier, max(received_at) AS last_seen, argMax(node_id, received_at) AS node_id
FROM (
    SELECT host_identifier, node_id, received_at FROM {database}.results
    UNION ALL
    SELECT host_identifier, node_id, received_at FROM {database}.status_logs
)
GROUP BY host_identifier""",
        f"""CREATE VIEW IF NOT EXISTS {database}.query_rows_per_day AS
SELECT toDate(received_at) AS day, name, pack, query,
    count() AS row_count, uniqExact(host_identifier) AS host_count
FROM {database}.results
GROUP BY day, name, pack, query""",
        f"""CREATE VIEW IF NOT EXISTS {database}.latest_snapshot AS
SELECT name, pack, query, host_identifier, unix_time, column_names, column_values,
    decoration_names, decoration_values, node_id, received_at, batch_id{columns_map}
FROM {database}.results
WHERE action = 'snapshot'
    AND (host_identifier, name, unix_time) {in_subquery} (
        SELECT host_identifier, name, max(unix_time)
        FROM {database}.results
        WHERE action = 'snapshot'
        GROUP BY host_identifier, name
    )""",
        hosts_current_view(database),
        *host_query_views(database, modern, in_subquery),
    ]


def host_query_views(database: str, modern: bool, in_subquery: str) -> list[str]:
    """The views over scheduled host queries' answers (docs/analysts.md, docs/inventory.md)."""
    columns_map = ",\n    mapFromArrays(column_names, column_values) AS columns" if modern else ""
    return [
        # Per host and group: when it last answered, and last answered without an error.
        f"""CREATE VIEW IF NOT EXISTS {database}.host_query_freshness AS
SELECT node_id, argMax(host_identifier, collected_at) AS host_identifier, group_name,
    max(collected_at) AS last_answer_at, maxIf(collected_at, status = 0) AS last_success_at,
    maxIf(collected_at, status != 0) AS last_failure_at, max(slot) AS last_slot
FROM {database}.host_query_status
GROUP BY node_id, group_name""",
        # The rows of each host's latest successful answer to each vitals query.
        f"""CREATE VIEW IF NOT EXISTS {database}.host_vitals_latest AS
SELECT node_id, host_identifier, query_name, collected_at, row_index,
    column_names, column_values{columns_map}
FROM {database}.host_query_rows
WHERE group_name = 'vitals'
    AND (node_id, query_name, collected_at) {in_subquery} (
        SELECT node_id, query_name, max(collected_at)
        FROM {database}.host_query_status
        WHERE group_name = 'vitals' AND status = 0
        GROUP BY node_id, query_name
    )""",
        # One row per host: the vitals people look for first, from the latest answers.
        f"""CREATE VIEW IF NOT EXISTS {database}.host_vitals AS
SELECT node_id, any(host_identifier) AS host_identifier, max(collected_at) AS collected_at,
    {_vital("os_version", "name")} AS os_name,
    {_vital("os_version", "version")} AS os_version,
    {_vital("os_version", "arch")} AS arch,
    {_vital("osquery_info", "version")} AS osquery_version,
    {_vital("system_info", "hardware_model")} AS hardware_model,
    {_vital("system_info", "physical_memory")} AS physical_memory,
    {_vital("uptime", "total_seconds")} AS uptime_seconds,
    groupArrayIf({_row_value("address")}, query_name = 'interface_addresses') AS addresses,
    groupUniqArrayIf({_row_value("user")}, query_name = 'logged_in_users') AS logged_in_users
FROM {database}.host_vitals_latest
GROUP BY node_id""",
        f"""CREATE VIEW IF NOT EXISTS {database}.software AS
SELECT {SOFTWARE_KEY},
    minMerge(first_seen) AS first_seen, maxMerge(last_seen) AS last_seen
FROM {database}.{SOFTWARE_STATE}
GROUP BY {SOFTWARE_KEY}""",
    ]


def _vital(query: str, column: str) -> str:
    return f"anyIf({_row_value(column)}, query_name = '{query}' AND row_index = 0)"


# Creating and migrating


def schema_statements(
    database: str, modern: bool, days: Mapping[str, int] | None = None, cluster: str = ""
) -> list[str]:
    """CREATE statements for the database and its tables (one host's); safe to run again."""
    days = retention_days() if days is None else days
    statements = [f"CREATE DATABASE IF NOT EXISTS {database}"]
    for table in TABLES:
        statements.append(create_table(database, table, modern, days.get(table.name, 0), cluster))
        if cluster:
            statements.append(create_distributed_table(database, table, cluster))
    return statements


def missing_column_statements(
    database: str, modern: bool, existing: Mapping[str, set[str]], cluster: str = ""
) -> list[str]:
    """ALTER TABLE ADD COLUMN for each column an older schema's table lacks.

    On a cluster the local table comes first: a Distributed table may only name columns
    its local table has. A replicated ALTER reaches the other replicas by itself.
    """
    names = [local_table(table.name, cluster) for table in TABLES]
    if cluster:
        names += [table.name for table in TABLES]
    columns_of = {table.name: table for table in TABLES}
    statements = []
    for name in names:
        table = columns_of[name.removesuffix(LOCAL_SUFFIX) if cluster else name]
        for column in table.columns_for(modern):
            if column.name not in existing.get(name, set()):
                statements.append(
                    f"ALTER TABLE {database}.{name} ADD COLUMN {column.definition(modern)}"
                )
    return statements


def ttl_statements(
    database: str, engines: Mapping[str, str], days: Mapping[str, int], cluster: str = ""
) -> list[str]:
    """ALTER TABLE MODIFY/REMOVE TTL where a table's TTL differs from the retention setting."""
    statements = []
    for table in TABLES:
        name = local_table(table.name, cluster)
        engine = engines.get(name, "")
        wanted = ttl_clause(days.get(table.name, 0))
        if wanted and wanted not in engine:
            statements.append(f"ALTER TABLE {database}.{name} MODIFY {wanted}")
        elif not wanted and " TTL " in engine:
            statements.append(f"ALTER TABLE {database}.{name} REMOVE TTL")
    return statements


def apply_schema(
    run: RunSql, database: str, modern: bool, days: Mapping[str, int], cluster: str = ""
) -> None:
    """Create or bring up to date the database, tables and views; safe to run again.

    On a cluster this is one host's part; the caller runs it on every host.
    """
    for statement in schema_statements(database, modern, days, cluster):
        run(statement)
    for statement in missing_column_statements(
        database, modern, columns_by_table(run, database), cluster
    ):
        run(statement)
    if modern:
        engines = dict(
            run(f"SELECT name, engine_full FROM system.tables WHERE database = '{database}'")
        )
        for statement in ttl_statements(database, engines, days, cluster):
            run(statement)
    for statement in software_statements(database, cluster):
        run(statement)
    for statement in view_statements(database, modern, cluster):
        run(statement)


def columns_by_table(run: RunSql, database: str) -> dict[str, set[str]]:
    existing: dict[str, set[str]] = {}
    for table, column in run(
        f"SELECT table, name FROM system.columns WHERE database = '{database}'"
    ):
        existing.setdefault(table, set()).add(column)
    return existing


# Retention on 18.16: dropping whole day partitions


class QueryableStore(Protocol):
    def query(self, sql: str) -> Any: ...


def partition_last_day(partition: str) -> date | None:
    """The last day a partition holds: `20250105` (by day) or `202501` (older, by month)."""
    text = partition.strip("'")
    try:
        if len(text) == 8:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        if len(text) == 6:
            first_of_next = date(int(text[:4]) + int(text[4:]) // 12, int(text[4:]) % 12 + 1, 1)
            return first_of_next - timedelta(days=1)
    except ValueError:
        return None
    return None


def expired_partitions(
    partitions: Sequence[Sequence[str]], days: Mapping[str, int], today: date
) -> list[tuple[str, str]]:
    """(table, partition) pairs whose every day is older than the table's retention."""
    expired = []
    for table, partition in partitions:
        keep_days = days.get(table, 0)
        last_day = partition_last_day(str(partition))
        if keep_days > 0 and last_day is not None and last_day < today - timedelta(days=keep_days):
            expired.append((table, str(partition)))
    return sorted(set(expired))


def drop_expired_partitions(
    store: QueryableStore,
    days: Mapping[str, int] | None = None,
    today: date | None = None,
    database: str = "quarry",
    cluster: str = "",
) -> list[tuple[str, str]]:
    """Drop day partitions older than the retention; returns what was dropped.

    ClickHouse 18.16 has no TTL, so the ingest service calls this periodically. It is
    harmless on modern servers (TTL usually got there first) and also trims the month
    partitions of tables an older Quarry created. Days count by received_at.

    On a cluster `store` is one host: its `_local` tables' partitions are dropped, and a
    replicated DROP PARTITION reaches the other replicas of its shard by itself.
    """
    days = retention_days() if days is None else days
    today = today or datetime.now(UTC).date()
    rows = store.query(
        "SELECT DISTINCT table, partition FROM system.parts "
        f"WHERE database = '{database}' AND active"
    ).rows
    if cluster:
        rows = [
            (table.removesuffix(LOCAL_SUFFIX), partition)
            for table, partition in rows
            if table.endswith(LOCAL_SUFFIX)
        ]
    dropped = expired_partitions(rows, days, today)
    for table, partition in dropped:
        store.query(
            f"ALTER TABLE {database}.{local_table(table, cluster)} DROP PARTITION {partition}"
        )
    return dropped
