"""Flatten the JSON of a log batch into table rows: pure functions, no I/O.

osquery sends result logs in three shapes (event, batch/diffResults, snapshot; see
osquery-protocol.md §8); every shape becomes one `results` row per result row, so analysts
query one table whatever the host's logger flags were. Status lines become `status_logs`
rows, a live query's answer becomes `distributed_results` rows, and how each live query went on
a node (osquery's status, message and stats) one `distributed_status` row. With raw retention on,
every batch is also kept as received in `raw_batches` (`raw_batch_row`).

A scheduled query's name `pack_<pack>_<query>` is also split into `pack` and `query` at
the first `_` after `pack_` (pack names are usually written with `-`); see schema.py.

Leniency: osquery does not validate UTF-8 in table data, so bytes that are not UTF-8
become U+FFFD and the rest of the value and batch is kept. A batch whose JSON does not
parse, or is not an array, is rejected as a whole (`MalformedBatch`). Inside a good batch,
a record that is not an object, or a result record with none of `columns`, `diffResults`
or `snapshot`, is skipped and counted; a field of the wrong type is stored as best possible
(a number that does not parse becomes 0). Rejecting the whole batch for one bad record
would make osquery resend it for ever.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from protos.v1 import logs_pb2

RESULTS_TABLE = "results"
STATUS_TABLE = "status_logs"
DISTRIBUTED_TABLE = "distributed_results"
DISTRIBUTED_STATUS_TABLE = "distributed_status"
RAW_TABLE = "raw_batches"
HOST_QUERY_ROWS_TABLE = "host_query_rows"
HOST_QUERY_STATUS_TABLE = "host_query_status"

# Top-level keys osquery itself writes; any other key is a top-level decoration
# (--decorations_top_level).
RESULT_FIELDS = frozenset(
    {
        "name",
        "hostIdentifier",
        "calendarTime",
        "unixTime",
        "epoch",
        "counter",
        "numerics",
        "decorations",
        "columns",
        "action",
        "snapshot",
        "diffResults",
    }
)
STATUS_FIELDS = frozenset(
    {
        "hostIdentifier",
        "calendarTime",
        "unixTime",
        "severity",
        "filename",
        "line",
        "message",
        "version",
        "decorations",
        "log_type",
    }
)

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

# A row is a tuple in the order of its table's column tuple below: ClickHouse takes the
# rows column by column, and zip(*rows) makes the columns at C speed (a dict per row and a
# column list per name cost ingest a third of its time).
Row = tuple[Any, ...]

# The columns of each table that ingest writes (the others have defaults in schema.py).
COMMON_COLUMNS = ("node_id", "received_at", "batch_id")
RESULT_HEADER_COLUMNS = (
    *COMMON_COLUMNS,
    "name",
    "pack",
    "query",
    "host_identifier",
    "calendar_time",
    "unix_time",
    "epoch",
    "counter",
    "numerics",
    "decoration_names",
    "decoration_values",
)
RESULT_COLUMNS = (*RESULT_HEADER_COLUMNS, "action", "column_names", "column_values")
STATUS_COLUMNS = (
    *COMMON_COLUMNS,
    "host_identifier",
    "calendar_time",
    "unix_time",
    "severity",
    "filename",
    "line",
    "message",
    "version",
    "decoration_names",
    "decoration_values",
)
DISTRIBUTED_COLUMNS = (
    *COMMON_COLUMNS,
    "campaign_id",
    "host_identifier",
    "row_index",
    "column_names",
    "column_values",
)
# osquery's per-query `stats` in a distributed write (5.x); absent ones are stored as 0.
QUERY_STATS = ("wall_time_ms", "user_time", "system_time", "memory")
DISTRIBUTED_STATUS_COLUMNS = (
    *COMMON_COLUMNS,
    "campaign_id",
    "host_identifier",
    "status",
    "message",
    "row_count",
    *QUERY_STATS,
)
# Scheduled host queries (vitals, software: docs/inventory.md): the batch's receive time is
# when the answer was collected, the same for a write's rows and statuses.
HOST_QUERY_ROWS_COLUMNS = (
    *COMMON_COLUMNS,
    "group_name",
    "query_name",
    "host_identifier",
    "collected_at",
    "row_index",
    "column_names",
    "column_values",
)
HOST_QUERY_STATUS_COLUMNS = (
    *COMMON_COLUMNS,
    "group_name",
    "query_name",
    "host_identifier",
    "collected_at",
    "slot",
    "status",
    "message",
    "row_count",
    *QUERY_STATS,
)
BATCH_ID_INDEX = COMMON_COLUMNS.index("batch_id")  # the same in every table's rows
RAW_COLUMNS = (*COMMON_COLUMNS, "kind", "host_identifier", "campaign_id", "data_json")
TABLE_COLUMNS = {
    RESULTS_TABLE: RESULT_COLUMNS,
    STATUS_TABLE: STATUS_COLUMNS,
    DISTRIBUTED_TABLE: DISTRIBUTED_COLUMNS,
    DISTRIBUTED_STATUS_TABLE: DISTRIBUTED_STATUS_COLUMNS,
    RAW_TABLE: RAW_COLUMNS,
    HOST_QUERY_ROWS_TABLE: HOST_QUERY_ROWS_COLUMNS,
    HOST_QUERY_STATUS_TABLE: HOST_QUERY_STATUS_COLUMNS,
}


class MalformedBatch(ValueError):
    """The batch as a whole cannot be read; the message says why, for the LogAck."""


@dataclass
class FlatBatch:
    """The rows one batch adds to one table, and how many records had to be skipped."""

    table: str
    rows: list[Row] = field(default_factory=list)
    skipped_records: int = 0

    @property
    def columns(self) -> tuple[str, ...]:
        return TABLE_COLUMNS[self.table]

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as column -> value dicts, for people and tests."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def flatten_batch(batch: logs_pb2.LogBatch, records: list[Any] | None = None) -> FlatBatch:
    """Rows for the table this batch's kind goes to; raises MalformedBatch.

    `records`: its data_json already parsed, when the caller has it.
    """
    if records is None:
        records = parse_records(batch.data_json)
    common = (batch.node_id, clamp_uint(batch.received_at, UINT32_MAX), batch.batch_id)
    if batch.kind == logs_pb2.RESULT:
        return flatten_results(records, common, batch.host_identifier)
    if batch.kind == logs_pb2.STATUS:
        return flatten_status(records, common, batch.host_identifier)
    if batch.kind == logs_pb2.DISTRIBUTED:
        return flatten_distributed(records, common, batch.host_identifier, batch.campaign_id)
    if batch.kind == logs_pb2.DISTRIBUTED_STATUS:
        return flatten_distributed_status(records, common, batch.host_identifier)
    if batch.kind == logs_pb2.HOST_QUERY:
        return flatten_host_query(records, common, batch.host_identifier)
    if batch.kind == logs_pb2.HOST_QUERY_STATUS:
        return flatten_host_query_status(records, common, batch.host_identifier)
    raise MalformedBatch(f"unknown log kind {batch.kind}")


def parse_records(data_json: bytes) -> list[Any]:
    try:
        records = orjson.loads(data_json)
    except orjson.JSONDecodeError:
        records = parse_lenient(data_json)
    if not isinstance(records, list):
        raise MalformedBatch(f"data_json must be a JSON array, got {type(records).__name__}")
    return records


def parse_lenient(data_json: bytes) -> Any:
    """JSON whose strings may hold bytes that are not UTF-8 (osquery sends them as is)."""
    try:
        return orjson.loads(data_json.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError as exc:
        raise MalformedBatch(f"data_json is not valid JSON: {exc}") from None


# Results


def flatten_results(records: list[Any], common: Row, host_identifier: str) -> FlatBatch:
    flat = FlatBatch(RESULTS_TABLE)
    header: Row | None = None
    shared: Row = ()
    for record in records:
        rows = result_record_rows(record)
        if rows is None:
            flat.skipped_records += 1
            continue
        # Consecutive records of one query run (event format: one record per row) share every
        # field but their columns and action: read those once per run, not once per row.
        this_header = record_header(record)
        if this_header is None or this_header != header:
            header, shared = this_header, result_record_fields(record, common, host_identifier)
        for action, values in rows:
            flat.rows.append((*shared, action, *column_arrays(values)))
    return flat


def result_record_rows(record: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """(action, column values) for each result row of one record; None if unreadable."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("columns"), dict):
        return [(as_text(record.get("action")), record["columns"])]
    if isinstance(record.get("diffResults"), dict):
        diff = record["diffResults"]
        return [
            *(("removed", row) for row in object_list(diff.get("removed"))),
            *(("added", row) for row in object_list(diff.get("added"))),
        ]
    if isinstance(record.get("snapshot"), list):
        return [("snapshot", row) for row in object_list(record["snapshot"])]
    return None


def record_header(record: dict[str, Any]) -> Row | None:
    """What decides a result record's stored fields but its rows; None: not comparable.

    Python says `1 == 1.0 == True`, stored strings do not: text fields must be strings,
    numerics is compared as the flag it becomes, decoration values must be strings, and a
    record with top-level decorations is not compared at all (all rare; such records are
    simply read one by one). Numbers stored as integers compare safely as they are.
    """
    get = record.get
    name, host, calendar_time, decorations = (
        get("name"),
        get("hostIdentifier"),
        get("calendarTime"),
        get("decorations"),
    )
    if not (
        type(name) is str
        and type(calendar_time) is str
        and (host is None or type(host) is str)
        and record.keys() <= RESULT_FIELDS
    ):
        return None
    if decorations is not None and not (
        type(decorations) is dict and all(type(value) is str for value in decorations.values())
    ):
        return None
    return (
        name,
        host,
        calendar_time,
        get("unixTime"),
        get("epoch"),
        get("counter"),
        get("numerics") is True,
        decorations,
    )


def result_record_fields(record: dict[str, Any], common: Row, host_identifier: str) -> Row:
    """The RESULT_HEADER_COLUMNS values of every row of this record."""
    names, values = decoration_arrays(record, RESULT_FIELDS)
    name = as_text(record.get("name"))
    pack, query = split_query_name(name)
    return (
        *common,
        name,
        pack,
        query,
        host_identifier or as_text(record.get("hostIdentifier")),
        as_text(record.get("calendarTime")),
        as_uint(record.get("unixTime"), UINT32_MAX),
        as_uint(record.get("epoch"), UINT64_MAX),
        as_uint(record.get("counter"), UINT64_MAX),
        1 if record.get("numerics") is True else 0,
        names,
        values,
    )


@functools.lru_cache(maxsize=4096)
def split_query_name(name: str) -> tuple[str, str]:
    """(pack, query) of `pack_<pack>_<query>`, split at the first `_`; ("", name) otherwise."""
    if name.startswith("pack_"):
        pack, delimiter, query = name[len("pack_") :].partition("_")
        if delimiter:
            return pack, query
    return "", name


# Status logs


def flatten_status(records: list[Any], common: Row, host_identifier: str) -> FlatBatch:
    flat = FlatBatch(STATUS_TABLE)
    for record in records:
        if not isinstance(record, dict):
            flat.skipped_records += 1
            continue
        flat.rows.append(
            (
                *common,
                host_identifier or as_text(record.get("hostIdentifier")),
                as_text(record.get("calendarTime")),
                as_uint(record.get("unixTime"), UINT32_MAX),
                # Before osquery 5.10 these numbers arrive as strings ("0", "119").
                as_uint(record.get("severity"), 255),
                as_text(record.get("filename")),
                as_uint(record.get("line"), UINT32_MAX),
                as_text(record.get("message")),
                as_text(record.get("version")),
                *decoration_arrays(record, STATUS_FIELDS),
            )
        )
    return flat


# Distributed (live query) results


def flatten_distributed(
    records: list[Any], common: Row, host_identifier: str, campaign_id: str
) -> FlatBatch:
    flat = FlatBatch(DISTRIBUTED_TABLE)
    for row_index, record in enumerate(records):
        if not isinstance(record, dict):
            flat.skipped_records += 1
            continue
        flat.rows.append((*common, campaign_id, host_identifier, row_index, *column_arrays(record)))
    return flat


def query_outcome(record: dict) -> tuple:
    """How one query went on a host, as osquery's distributed write says: status, message,
    row count and its stats (the columns both status tables share, ingest_service/schema.py)."""
    return (
        as_uint(record.get("status"), UINT32_MAX),
        as_text(record.get("message")),
        as_uint(record.get("row_count"), UINT64_MAX),
        *(as_uint(record.get(stat), UINT64_MAX) for stat in QUERY_STATS),
    )


def flatten_distributed_status(records: list[Any], common: Row, host_identifier: str) -> FlatBatch:
    flat = FlatBatch(DISTRIBUTED_STATUS_TABLE)
    for record in records:
        if not isinstance(record, dict):
            flat.skipped_records += 1
            continue
        flat.rows.append(
            (
                *common,
                as_text(record.get("campaign_id")),
                host_identifier,
                *query_outcome(record),
            )
        )
    return flat


# Scheduled host queries


def flatten_host_query(records: list[Any], common: Row, host_identifier: str) -> FlatBatch:
    """One row per result row of each answer (protos/v1/logs.proto, HOST_QUERY)."""
    flat = FlatBatch(HOST_QUERY_ROWS_TABLE)
    for record in records:
        rows = record.get("rows") if isinstance(record, dict) else None
        if not isinstance(rows, list):
            flat.skipped_records += 1
            continue
        # Collected when the gateway received the write.
        header = (*common, as_text(record.get("group")), as_text(record.get("query")),
                  host_identifier, common[1])  # fmt: skip
        for row_index, row in enumerate(rows):
            if isinstance(row, dict):
                flat.rows.append((*header, row_index, *column_arrays(row)))
    return flat


def flatten_host_query_status(records: list[Any], common: Row, host_identifier: str) -> FlatBatch:
    flat = FlatBatch(HOST_QUERY_STATUS_TABLE)
    for record in records:
        if not isinstance(record, dict):
            flat.skipped_records += 1
            continue
        flat.rows.append(
            (
                *common,
                as_text(record.get("group")),
                as_text(record.get("query")),
                host_identifier,
                common[1],
                as_uint(record.get("slot"), UINT64_MAX),
                *query_outcome(record),
            )
        )
    return flat


# Raw retention


def raw_batch_row(batch: logs_pb2.LogBatch) -> Row:
    """The batch as the gateway forwarded it, for forensic replay (`raw_batches`)."""
    return (
        batch.node_id,
        clamp_uint(batch.received_at, UINT32_MAX),
        batch.batch_id,
        logs_pb2.LogKind.Name(batch.kind).lower(),
        batch.host_identifier,
        batch.campaign_id,
        batch.data_json.decode("utf-8", errors="replace"),
    )


# Values


def column_arrays(values: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Parallel name and value arrays, every value as the string osquery would log."""
    # The hot loop of ingest: most values are already strings, so skip the call for them.
    return list(values), [
        value if type(value) is str else as_text(value) for value in values.values()
    ]


def decoration_arrays(record: dict[str, Any], known_fields: frozenset[str]) -> tuple[list, list]:
    """Nested `decorations` plus any unknown top-level key (--decorations_top_level)."""
    nested = record.get("decorations")
    top_level = record.keys() - known_fields
    if not top_level:
        return column_arrays(nested) if isinstance(nested, dict) else ([], [])
    decorations: dict[str, Any] = dict(nested) if isinstance(nested, dict) else {}
    for key in record:
        if key in top_level:
            decorations[key] = record[key]
    return column_arrays(decorations)


def object_list(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, dict)]


def as_text(value: Any) -> str:
    """A JSON value as the string osquery logs without --logger_numerics."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return double_text(value)
    return orjson.dumps(value).decode()


def double_text(value: float) -> str:
    """osquery's REAL format: 15 significant digits, always with a decimal point."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.15g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def as_uint(value: Any, maximum: int) -> int:
    """A non-negative integer from a JSON number or numeric string; 0 when unreadable."""
    if type(value) is int:
        return value if 0 <= value <= maximum else clamp_uint(value, maximum)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return clamp_uint(value, maximum)
    if isinstance(value, str):
        text = value.strip()
        # int() first: float() would round a large counter.
        for parse in (int, float):
            try:
                return clamp_uint(parse(text), maximum)
            except ValueError:
                continue
    return 0


def clamp_uint(value: float, maximum: int) -> int:
    if not math.isfinite(value):
        return 0
    return min(max(int(value), 0), maximum)
