"""The osquery flags that connect a node to this Quarry cluster.

osquery reads options from the config too, and a config's options win over flags; the
intervals printed here are the built-in config's (osquery_config/state.py
DEFAULT_OPTIONS), so the flags never promise what the config then overrides. The carver
flags are what `quarry carve` needs (docs/carving.md, docs/osquery-protocol.md §10); the
endpoints are the gateway's (gateway/osquery_api.py).
"""

from __future__ import annotations

from pathlib import Path

from osquery_config.state import DEFAULT_OPTIONS
from quarry.runtime.settings import Settings

# 1 MiB blocks: far fewer requests than osquery's 8 KiB default, and within the gateway's
# default QUARRY_CARVE_MAX_BLOCK_BYTES (2 MiB).
CARVER_BLOCK_SIZE = 1024 * 1024


def osquery_flags(settings: Settings, ca_path: Path, secret_path: Path) -> list[str]:
    """Flags for osqueryd, using Fleet's paths (an existing Fleet flagfile works too)."""
    host = f"{settings.public_host}:{settings.gateway_port}"
    return [
        f"--tls_hostname={host}",
        f"--tls_server_certs={ca_path.resolve()}",
        f"--enroll_secret_path={secret_path.resolve()}",
        "--enroll_tls_endpoint=/api/v1/osquery/enroll",
        "--config_plugin=tls",
        "--config_tls_endpoint=/api/v1/osquery/config",
        "--config_refresh=60",
        "--logger_plugin=tls",
        "--logger_tls_endpoint=/api/v1/osquery/log",
        f"--logger_tls_period={DEFAULT_OPTIONS['logger_tls_period']}",
        "--logger_tls_compress=true",
        "--disable_distributed=false",
        "--distributed_plugin=tls",
        f"--distributed_interval={DEFAULT_OPTIONS['distributed_interval']}",
        "--distributed_tls_read_endpoint=/api/v1/osquery/distributed/read",
        "--distributed_tls_write_endpoint=/api/v1/osquery/distributed/write",
        "--disable_carver=false",
        "--carver_start_endpoint=/api/v1/osquery/carve/begin",
        "--carver_continue_endpoint=/api/v1/osquery/carve/block",
        f"--carver_block_size={CARVER_BLOCK_SIZE}",
        "--host_identifier=uuid",
    ]


def write_flagfile(path: Path, flags: list[str]) -> Path:
    path.write_text("\n".join(flags) + "\n")
    return path
