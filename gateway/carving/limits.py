"""Carve settings: where carves live, how large they may be, how long they may take.

They are read from QUARRY_CARVE_* variables here rather than in quarry/runtime/settings.py, so
carving keeps its settings beside the code that uses them; where carves live
(QUARRY_CARVE_DIR, else state_dir/carves) is the state directory's
(quarry/state/directory.py), since `quarry carve` reads them there too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quarry.runtime.settings import Settings
from quarry.state.directory import carve_dir

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class CarveLimits:
    directory: Path  # the carve index and data files
    max_carve_bytes: int = 4 * GIB
    # A block travels base64-encoded in one request, which the gateway caps at 64 MiB.
    # osquery's --carver_block_size defaults to 8 KiB; a block's base64 must also stay under
    # the gateway's string limit (QUARRY_REQUEST_MAX_STRING_CHARS, 4 Mi characters).
    max_block_bytes: int = 2 * MIB
    max_block_count: int = 4 * GIB // 8192  # 4 GiB in osquery's default 8 KiB blocks
    expiry_hours: float = 4.0  # a carve not complete this long after its start is dropped
    retention_days: float = 30.0  # complete carves are deleted this long after completion
    min_free_bytes: int = 256 * MIB  # refuse a carve that would leave less free disk

    @property
    def max_block_request_bytes(self) -> int:
        """The largest continue request a block within the limit makes: base64 plus JSON."""
        return 4 * -(-self.max_block_bytes // 3) + 1024

    @property
    def expiry_s(self) -> float:
        return self.expiry_hours * 3600

    @property
    def retention_s(self) -> float:
        return self.retention_days * 86400


ENV_FIELDS = {
    "QUARRY_CARVE_MAX_BYTES": ("max_carve_bytes", int),
    "QUARRY_CARVE_MAX_BLOCK_BYTES": ("max_block_bytes", int),
    "QUARRY_CARVE_MAX_BLOCKS": ("max_block_count", int),
    "QUARRY_CARVE_EXPIRY_HOURS": ("expiry_hours", float),
    "QUARRY_CARVE_RETENTION_DAYS": ("retention_days", float),
    "QUARRY_CARVE_MIN_FREE_BYTES": ("min_free_bytes", int),
}


def carve_limits(settings: Settings, environ: Mapping[str, str] | None = None) -> CarveLimits:
    """Defaults, overridden by QUARRY_CARVE_* variables; QUARRY_CARVE_DIR moves the store."""
    env = os.environ if environ is None else environ
    directory = carve_dir(settings, env)
    values: dict[str, object] = {}
    for variable, (name, kind) in ENV_FIELDS.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a {kind.__name__}, got {raw!r}") from None
    return CarveLimits(directory=directory, **values)  # type: ignore[arg-type]
