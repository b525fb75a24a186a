"""Writing values into ClickHouse SQL text, for the few queries Quarry builds by hand."""

from __future__ import annotations


def sql_string(value: str) -> str:
    """A ClickHouse string literal: quoted, with backslashes and quotes escaped."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
