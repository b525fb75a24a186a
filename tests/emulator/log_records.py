"""Builders for the log objects osquery puts in a logger request's `data` (spec §8).

Each builder returns a dict whose key order is osquery's, so `orjson.dumps` gives the
bytes osqueryd would send. Column values are strings unless `numerics` is on, as with
osquery's default `--logger_numerics=false`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]

SEVERITY_INFO, SEVERITY_WARNING, SEVERITY_ERROR = 0, 1, 2


def calendar_time(unix_time: int) -> str:
    """`asctime(gmtime(t))` plus " UTC", e.g. "Sun Jan  5 10:20:30 2025 UTC"."""
    return time.asctime(time.gmtime(unix_time)) + " UTC"


def string_value(value: Any) -> str:
    """A column value as osquery renders it without numerics (floats always carry a '.')."""
    if value is None:
        return ""  # --nullvalue's default
    if isinstance(value, float):
        text = f"{value:.15g}"
        return text if any(c in text for c in ".en") else f"{text}.0"
    return str(value)


def columns(row: Row, numerics: bool = False) -> dict[str, Any]:
    """A row with keys sorted (osquery's Row is a std::map) and values stringified."""
    if numerics:
        return {key: "" if row[key] is None else row[key] for key in sorted(row)}
    return {key: string_value(row[key]) for key in sorted(row)}


def legacy_fields(
    name: str,
    host_identifier: str,
    unix_time: int,
    *,
    epoch: int = 0,
    counter: int = 0,
    numerics: bool = False,
    decorations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The fields osquery adds to every result record, in its order."""
    fields: dict[str, Any] = {
        "name": name,
        "hostIdentifier": host_identifier,
        "calendarTime": calendar_time(unix_time),
        "unixTime": unix_time,
        "epoch": epoch,
        "counter": counter,
        "numerics": numerics,
    }
    if decorations:
        fields["decorations"] = dict(sorted(decorations.items()))
    return fields


def event_record(
    name: str,
    host_identifier: str,
    unix_time: int,
    row: Row,
    action: str = "added",
    *,
    epoch: int = 0,
    counter: int = 0,
    numerics: bool = False,
    decorations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One changed row in the default event format; `action` is added/removed/snapshot."""
    record = legacy_fields(
        name,
        host_identifier,
        unix_time,
        epoch=epoch,
        counter=counter,
        numerics=numerics,
        decorations=decorations,
    )
    record["columns"] = columns(row, numerics)
    record["action"] = action
    return record


def event_records(
    name: str,
    host_identifier: str,
    unix_time: int,
    *,
    added: Sequence[Row] = (),
    removed: Sequence[Row] = (),
    counter: int = 0,
    numerics: bool = False,
    decorations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One differential run in event format: all removed rows first, then all added."""
    changes = [(row, "removed") for row in removed] + [(row, "added") for row in added]
    return [
        event_record(
            name,
            host_identifier,
            unix_time,
            row,
            action,
            counter=counter,
            numerics=numerics,
            decorations=decorations,
        )
        for row, action in changes
    ]


def batch_record(
    name: str,
    host_identifier: str,
    unix_time: int,
    *,
    added: Sequence[Row] = (),
    removed: Sequence[Row] = (),
    epoch: int = 0,
    counter: int = 0,
    numerics: bool = False,
    decorations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One differential run in batch format (`--logger_event_type=false`)."""
    record: dict[str, Any] = {
        "diffResults": {
            "removed": [columns(row, numerics) for row in removed],
            "added": [columns(row, numerics) for row in added],
        }
    }
    record.update(
        legacy_fields(
            name,
            host_identifier,
            unix_time,
            epoch=epoch,
            counter=counter,
            numerics=numerics,
            decorations=decorations,
        )
    )
    return record


def snapshot_record(
    name: str,
    host_identifier: str,
    unix_time: int,
    rows: Sequence[Row],
    *,
    epoch: int = 0,
    numerics: bool = False,
    decorations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One snapshot execution: keys snapshot, action, then the legacy fields (counter 0)."""
    record: dict[str, Any] = {
        "snapshot": [columns(row, numerics) for row in rows],
        "action": "snapshot",
    }
    record.update(
        legacy_fields(
            name,
            host_identifier,
            unix_time,
            epoch=epoch,
            numerics=numerics,
            decorations=decorations,
        )
    )
    return record


def snapshot_event_records(
    name: str,
    host_identifier: str,
    unix_time: int,
    rows: Sequence[Row],
    *,
    numerics: bool = False,
    decorations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A snapshot with `--logger_snapshot_event_type=true`: one event per row, none if empty."""
    return [
        event_record(
            name,
            host_identifier,
            unix_time,
            row,
            "snapshot",
            numerics=numerics,
            decorations=decorations,
        )
        for row in rows
    ]


def status_record(
    host_identifier: str,
    unix_time: int,
    message: str,
    *,
    severity: int = SEVERITY_INFO,
    filename: str = "scheduler.cpp",
    line: int = 100,
    version: str = "5.23.1",
    decorations: Mapping[str, str] | None = None,
    all_strings: bool = False,
) -> dict[str, Any]:
    """A status (glog) line; `all_strings` gives the pre-5.10 form with every value a string."""
    record: dict[str, Any] = {
        "hostIdentifier": host_identifier,
        "calendarTime": calendar_time(unix_time),
        "unixTime": str(unix_time) if all_strings else unix_time,
        "severity": str(severity) if all_strings else severity,
        "filename": filename,
        "line": str(line) if all_strings else line,
        "message": message,
        "version": version,
    }
    if decorations:
        record["decorations"] = dict(sorted(decorations.items()))
    return record


def decorations_at_top_level(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as `--decorations_top_level` writes it: the keys take `decorations`' place."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "decorations":
            flat.update(value)
        else:
            flat[key] = value
    return flat
