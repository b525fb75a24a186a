"""What the enroll service keeps from osquery's `host_details` enrollment object."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class HostFacts:
    hostname: str = ""
    hardware_uuid: str = ""
    hardware_serial: str = ""
    platform: str = ""
    osquery_version: str = ""
    # os_version.version, e.g. "22.04.4 LTS (Jammy Jellyfish)": the hosts table shows it.
    os_version: str = ""


def parse_host_details(host_details_json: str) -> tuple[str, HostFacts]:
    """The details as compact JSON and the facts we index; garbage JSON counts as none."""
    try:
        details = json.loads(host_details_json) if host_details_json else {}
    except ValueError:
        details = {}
    if not isinstance(details, dict):
        details = {}
    facts = HostFacts(
        hostname=_field(details, "system_info", "hostname"),
        hardware_uuid=_field(details, "system_info", "uuid"),
        hardware_serial=_field(details, "system_info", "hardware_serial"),
        platform=_field(details, "os_version", "platform"),
        osquery_version=_field(details, "osquery_info", "version"),
        os_version=_field(details, "os_version", "version"),
    )
    return json.dumps(details, separators=(",", ":")), facts


def _field(details: dict[str, object], table: str, column: str) -> str:
    row = details.get(table)
    if not isinstance(row, dict):
        return ""
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""
