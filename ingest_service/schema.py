"""The ClickHouse tables Quarry writes logs to, for ClickHouse 18.16 and for modern servers.

Every statement must run on Debian's ClickHouse 18.16 (no Map, no LowCardinality without an
experimental setting) and on modern ClickHouse (chdb 26.9). Column values are stored as
two parallel arrays (names, values), which every version reads; modern servers also get a
`columns` Map alias so analysts can write `columns['pid']`. docs/clickhouse-schema.md
documents each column for analysts; keep the two in step.
"""

from __future__ import annotations

# mapFromArrays arrived in 23.3; before that Map was experimental or missing.
MODERN_MIN_VERSION = (23, 3)


def is_modern(version: str) -> bool:
    """Whether a server of this version (as `SELECT version()` prints it) has Map and friends."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= MODERN_MIN_VERSION


def schema_statements(database: str, modern: bool) -> list[str]:
    """CREATE statements for the database and its three tables; safe to run again."""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        results_table(database, modern),
        status_logs_table(database, modern),
        distributed_results_table(database, modern),
    ]


def low_cardinality(modern: bool) -> str:
    return "LowCardinality(String)" if modern else "String"


def map_aliases(modern: bool, *maps: tuple[str, str, str]) -> str:
    """`name Map(String, String) ALIAS mapFromArrays(keys, values)` lines, modern only."""
    if not modern:
        return ""
    return "".join(
        f",\n    {name} Map(String, String) ALIAS mapFromArrays({keys}, {values})"
        for name, keys, values in maps
    )


COLUMNS_MAP = ("columns", "column_names", "column_values")
DECORATIONS_MAP = ("decorations", "decoration_names", "decoration_values")

# Partitioned by the server's receive time, not the host's clock: a host with a wrong
# clock must not create partitions for 1970 or 2099.
MERGE_TREE = "ENGINE = MergeTree\nPARTITION BY toYYYYMM(received_at)\nORDER BY ({order_by})"


def results_table(database: str, modern: bool) -> str:
    text = low_cardinality(modern)
    return f"""CREATE TABLE IF NOT EXISTS {database}.results (
    name {text},
    host_identifier String,
    unix_time DateTime,
    calendar_time String,
    action {text},
    column_names Array(String),
    column_values Array(String),
    decoration_names Array(String),
    decoration_values Array(String),
    epoch UInt64,
    counter UInt64,
    numerics UInt8,
    node_id String,
    received_at DateTime,
    batch_id String{map_aliases(modern, COLUMNS_MAP, DECORATIONS_MAP)}
)
{MERGE_TREE.format(order_by="name, host_identifier, unix_time")}"""


def status_logs_table(database: str, modern: bool) -> str:
    text = low_cardinality(modern)
    return f"""CREATE TABLE IF NOT EXISTS {database}.status_logs (
    host_identifier String,
    unix_time DateTime,
    calendar_time String,
    severity UInt8,
    filename {text},
    line UInt32,
    message String,
    version {text},
    decoration_names Array(String),
    decoration_values Array(String),
    node_id String,
    received_at DateTime,
    batch_id String{map_aliases(modern, DECORATIONS_MAP)}
)
{MERGE_TREE.format(order_by="host_identifier, unix_time")}"""


def distributed_results_table(database: str, modern: bool) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {database}.distributed_results (
    campaign_id String,
    host_identifier String,
    row_index UInt32,
    column_names Array(String),
    column_values Array(String),
    node_id String,
    received_at DateTime,
    batch_id String{map_aliases(modern, COLUMNS_MAP)}
)
{MERGE_TREE.format(order_by="campaign_id, host_identifier, row_index")}"""
