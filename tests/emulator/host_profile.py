"""Believable, deterministic hosts: the table rows an osqueryd would report about itself.

`HostProfile.make(index)` gives host number `index` of a simulated fleet: its hostname,
hardware UUID and serial are distinct per index and stable across runs, so a benchmark can
enroll thousands of different hosts and a test can predict what each one says. Values are
strings, as osquery's enroll `host_details` and distributed results always are (spec §4.2).
Column lists follow osquery's `specs/*.table`, in declaration order (the order of
`SELECT *`).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["linux", "darwin", "windows"]

# kPlatformType bitmasks as decimal strings (spec §4.2): Linux POSIX|LINUX, macOS POSIX|BSD|OSX.
PLATFORM_TYPES: dict[Platform, str] = {"linux": "9", "darwin": "21", "windows": "2"}
HOST_DETAIL_TABLES = ("os_version", "osquery_info", "platform_info", "system_info")


@dataclass
class HostProfile:
    """One simulated machine. `config_hash` is updated by the node after each config fetch."""

    index: int
    platform: Platform
    hostname: str
    hardware_uuid: str
    hardware_serial: str
    instance_id: str
    pid: int
    start_time: int
    physical_memory: int
    cpu_cores: int
    osquery_version: str = "5.23.1"
    config_hash: str = ""
    users: list[tuple[str, int]] = field(default_factory=list)  # (username, uid)

    @classmethod
    def make(
        cls, index: int = 0, platform: Platform = "linux", seed: int = 0, start_time: int = 0
    ) -> HostProfile:
        """Host number `index`; the same (index, platform, seed) always gives the same host."""
        rng = random.Random(f"{seed}:{platform}:{index}")
        prefix = {"linux": "web", "darwin": "mac", "windows": "win"}[platform]
        return cls(
            index=index,
            platform=platform,
            hostname=f"{prefix}-{index:05d}",
            hardware_uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper(),
            hardware_serial=f"SN{rng.getrandbits(40):010X}",
            instance_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            pid=rng.randrange(300, 60000),
            start_time=start_time or 1_736_000_000 + rng.randrange(0, 86400),
            physical_memory=rng.choice([8, 16, 32, 64]) * 1024**3,
            cpu_cores=rng.choice([2, 4, 8, 16]),
            users=[("root", 0), (f"user{index}", 1000 + rng.randrange(0, 100))],
        )

    @property
    def platform_type(self) -> str:
        return PLATFORM_TYPES[self.platform]

    def table(self, name: str) -> list[dict[str, str]] | None:
        """Rows of one emulated table in column order, or None if the table is unknown."""
        build = _TABLES.get(name)
        return None if build is None else build(self)

    def host_details(self) -> dict[str, dict[str, str]]:
        """The enroll `host_details`: row 0 of each table, keys sorted, tables sorted."""
        details = {}
        for name in HOST_DETAIL_TABLES:
            rows = self.table(name) or []
            if rows:
                details[name] = dict(sorted(rows[0].items()))
        return details


def _os_version(host: HostProfile) -> list[dict[str, str]]:
    if host.platform == "darwin":
        row = {
            "name": "macOS",
            "version": "14.5",
            "major": "14",
            "minor": "5",
            "patch": "0",
            "build": "23F79",
            "platform": "darwin",
            "platform_like": "darwin",
            "codename": "",
            "arch": "arm64",
            "extra": "",
        }
    elif host.platform == "windows":
        row = {
            "name": "Microsoft Windows 11 Enterprise",
            "version": "10.0.22631",
            "major": "10",
            "minor": "0",
            "patch": "",
            "build": "22631",
            "platform": "windows",
            "platform_like": "windows",
            "codename": "Microsoft Windows 11 Enterprise",
            "arch": "64-bit",
            "install_date": "1700000000",
            "revision": "3737",
        }
    else:
        row = {
            "name": "Ubuntu",
            "version": "22.04.4 LTS (Jammy Jellyfish)",
            "major": "22",
            "minor": "4",
            "patch": "0",
            "build": "",
            "platform": "ubuntu",
            "platform_like": "debian",
            "codename": "jammy",
            "arch": "x86_64",
        }
    return [row]


def _osquery_info(host: HostProfile) -> list[dict[str, str]]:
    return [
        {
            "pid": str(host.pid),
            "uuid": host.hardware_uuid,
            "instance_id": host.instance_id,
            "version": host.osquery_version,
            "config_hash": host.config_hash,
            "config_valid": "1" if host.config_hash else "0",
            "extensions": "inactive",
            "build_platform": host.platform,
            "build_distro": {"linux": "centos7", "darwin": "10.15", "windows": "10"}[host.platform],
            "start_time": str(host.start_time),
            "watcher": str(host.pid - 2),
            "platform_mask": host.platform_type,
        }
    ]


def _system_info(host: HostProfile) -> list[dict[str, str]]:
    row = {
        "hostname": host.hostname,
        "uuid": host.hardware_uuid,
        "cpu_type": "x86_64" if host.platform != "darwin" else "arm64e",
        "cpu_subtype": "6" if host.platform != "darwin" else "ARM64E",
        "cpu_brand": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
        "cpu_physical_cores": str(host.cpu_cores),
        "cpu_logical_cores": str(host.cpu_cores * 2),
        "cpu_sockets": "1",
        "cpu_microcode": "0x5003604",
        "physical_memory": str(host.physical_memory),
        "hardware_vendor": "Dell Inc.",
        "hardware_model": "PowerEdge R640",
        "hardware_version": "",
        "hardware_serial": host.hardware_serial,
        "board_vendor": "Dell Inc.",
        "board_model": "0H28RR",
        "board_version": "A00",
        "board_serial": f".{host.hardware_serial}.",
        "computer_name": host.hostname,
        "local_hostname": host.hostname,
    }
    if host.platform == "windows":
        row["emulated_cpu_type"] = ""
    return [row]


def _platform_info(host: HostProfile) -> list[dict[str, str]]:
    row = {
        "vendor": "Dell Inc.",
        "version": "2.19.1",
        "date": "06/21/2023",
        "revision": "2.19",
        "extra": "",
        "firmware_type": "uefi" if host.platform != "windows" else "bios",
    }
    if host.platform != "windows":
        row.update({"address": "0xf0000", "size": "64 KB", "volume_size": "0"})
    return [row]


def _processes(host: HostProfile) -> list[dict[str, str]]:
    def process(pid: int, name: str, path: str, parent: int, uid: int) -> dict[str, str]:
        return {
            "pid": str(pid),
            "name": name,
            "path": path,
            "cmdline": path,
            "state": "S",
            "uid": str(uid),
            "parent": str(parent),
            "resident_size": "25165824",
            "start_time": str(host.start_time),
        }

    return [
        process(1, "systemd", "/usr/lib/systemd/systemd", 0, 0),
        process(host.pid - 2, "osqueryd", "/opt/osquery/bin/osqueryd", 1, 0),
        process(host.pid, "osqueryd", "/opt/osquery/bin/osqueryd", host.pid - 2, 0),
        process(host.pid + 17, "sshd", "/usr/sbin/sshd", 1, 0),
    ]


def _users(host: HostProfile) -> list[dict[str, str]]:
    return [
        {
            "uid": str(uid),
            "gid": str(uid),
            "username": name,
            "description": name,
            "directory": "/root" if uid == 0 else f"/home/{name}",
            "shell": "/bin/bash",
            "uuid": "",
        }
        for name, uid in host.users
    ]


def _uptime(host: HostProfile) -> list[dict[str, str]]:
    return [{"days": "3", "hours": "4", "minutes": "5", "seconds": "6", "total_seconds": "273906"}]


_TABLES = {
    "os_version": _os_version,
    "osquery_info": _osquery_info,
    "system_info": _system_info,
    "platform_info": _platform_info,
    "processes": _processes,
    "users": _users,
    "uptime": _uptime,
}
