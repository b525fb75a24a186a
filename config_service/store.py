"""Config versions in SQLite. The newest version is the live config.

All SQL of the service lives here, behind ConfigStore, so PostgreSQL can replace it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from quarry.sqlite_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    version INTEGER PRIMARY KEY,
    config_json TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""

# Served as version 0 until someone sets a config. Nothing is scheduled, so a fresh
# fleet sends no result logs; distributed_interval 60 is osquery's own default (the
# gateway's `accelerate` shortens it while a live query is open), and logger_tls_period
# 10 (osquery: 4) sends the status logs of an idle node in fewer, larger POSTs.
DEFAULT_CONFIG_JSON = '{"options":{"distributed_interval":60,"logger_tls_period":10},"schedule":{}}'


@dataclass(frozen=True)
class ConfigVersion:
    version: int
    config_json: str
    author: str
    created_at: int
    sha256: str


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


DEFAULT_VERSION = ConfigVersion(
    version=0,
    config_json=DEFAULT_CONFIG_JSON,
    author="built-in default",
    created_at=0,
    sha256=sha256_hex(DEFAULT_CONFIG_JSON),
)


class ConfigStore(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    def live(self) -> ConfigVersion:
        """The newest stored version, or the built-in default when none is stored."""
        return self._latest(self._db) or DEFAULT_VERSION

    def add(self, config_json: str, author: str, now: int) -> tuple[ConfigVersion, bool]:
        """Store config_json as the next version; (version, created). Re-setting the live
        config creates nothing, so applying the same file twice is harmless."""
        digest = sha256_hex(config_json)
        with self._transaction() as db:
            latest = self._latest(db)
            if latest is not None and latest.sha256 == digest:
                return latest, False
            version = (latest.version if latest else 0) + 1
            db.execute(
                "INSERT INTO config_versions (version, config_json, author, created_at, sha256)"
                " VALUES (?, ?, ?, ?, ?)",
                (version, config_json, author, now, digest),
            )
        return ConfigVersion(version, config_json, author, now, digest), True

    @staticmethod
    def _latest(db: sqlite3.Connection) -> ConfigVersion | None:
        row = db.execute(
            "SELECT version, config_json, author, created_at, sha256 FROM config_versions"
            " ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return ConfigVersion(*row) if row else None
