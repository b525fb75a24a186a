"""The osquery flags that connect a node to this Quarry cluster."""

from __future__ import annotations

from pathlib import Path

from quarry.runtime.settings import Settings


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
        "--logger_tls_period=10",
        "--logger_tls_compress=true",
        "--disable_distributed=false",
        "--distributed_plugin=tls",
        "--distributed_interval=10",
        "--distributed_tls_read_endpoint=/api/v1/osquery/distributed/read",
        "--distributed_tls_write_endpoint=/api/v1/osquery/distributed/write",
        "--host_identifier=uuid",
    ]


def write_flagfile(path: Path, flags: list[str]) -> Path:
    path.write_text("\n".join(flags) + "\n")
    return path
