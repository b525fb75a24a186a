"""A local Prometheus for `quarry up --with-prometheus`: its configuration and command line.

It scrapes every Quarry process of this machine's cluster (one job per service, named
quarry-SERVICE as the alert rules and dashboards expect), loads Quarry's alert rules when
the source tree's deploy/ folder is at hand, and keeps its data under state_dir/prometheus.
Debian's `prometheus` package provides the binary; without it `quarry up` says so and
runs the cluster alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from quarry.runtime.settings import MEASURED_PROCESSES, SERVICES, Settings

BINARY_CANDIDATES = ("prometheus", "/usr/bin/prometheus")
RULES_FILE = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules/quarry-alerts.yml"


def find_binary() -> str | None:
    """The prometheus executable on PATH (or Debian's), None when not installed."""
    for candidate in BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def default_port(settings: Settings) -> int:
    """Just above the metrics ports, so QUARRY_PORT_BASE moves it with the rest."""
    return settings.metrics_port_base + len(SERVICES)


def scrape_config(
    settings: Settings, scrape_interval_s: float = 15.0, rule_files: list[str] | None = None
) -> dict:
    """Prometheus configuration scraping every Quarry process of this cluster."""
    interval = f"{scrape_interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files or [],
        "scrape_configs": [
            {
                "job_name": f"quarry-{service}",
                "static_configs": [
                    {"targets": [f"{settings.bind_host}:{settings.metrics_port(service)}"]}
                ],
            }
            for service in MEASURED_PROCESSES
        ],
    }


def write_config(settings: Settings, folder: Path, scrape_interval_s: float) -> Path:
    """prometheus.yml under folder (JSON is YAML), with the alert rules when available."""
    folder.mkdir(parents=True, exist_ok=True)
    rule_files = []
    if RULES_FILE.is_file():
        rule_files.append(str(shutil.copy(RULES_FILE, folder / RULES_FILE.name)))
    path = folder / "prometheus.yml"
    path.write_text(json.dumps(scrape_config(settings, scrape_interval_s, rule_files), indent=2))
    return path


def command(binary: str, config: Path, data_dir: Path, host: str, port: int) -> list[str]:
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]
