"""Whether this installation can run the embedded ClickHouse, and what to say when it cannot.

chdb is the `embedded` extra (pyproject.toml): a server image leaves it out and points
ingest at a ClickHouse server with QUARRY_CLICKHOUSE_URL (docs/deploy.md, "The image").
`quarry up` and the ingest process both ask here first, so a missing chdb is one line
saying what to install, never an import traceback.
"""

from __future__ import annotations

import importlib.util

from quarry.runtime.settings import Settings

CHDB_MISSING = (
    "embedded ClickHouse needs chdb, which is not installed: "
    "pip install 'quarry[embedded]', or set QUARRY_CLICKHOUSE_URL to a ClickHouse server"
)


def chdb_installed() -> bool:
    return importlib.util.find_spec("chdb") is not None


def embedded_store_problem(settings: Settings) -> str | None:
    """The line to print when these settings need chdb and it is absent; None otherwise."""
    if settings.clickhouse_url or chdb_installed():
        return None
    return CHDB_MISSING
