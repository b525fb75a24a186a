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
    # Tables this host's osquery lacks (an older build): querying one fails as osquery does.
    missing_tables: frozenset[str] = frozenset()
    # Installed packages, per package table (the software inventory); see _packages.
    packages: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    @classmethod
    def make(
        cls, index: int = 0, platform: Platform = "linux", seed: int = 0, start_time: int = 0
    ) -> HostProfile:
        """Host number `index`; the same (index, platform, seed) always gives the same host."""
        rng = random.Random(f"{seed}:{platform}:{index}")
        prefix = {"linux": "web", "darwin": "mac", "windows": "win"}[platform]
        profile = cls(
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
        profile.packages = _installed_packages(platform, rng)
        return profile

    @property
    def platform_type(self) -> str:
        return PLATFORM_TYPES[self.platform]

    def table(self, name: str) -> list[dict[str, str]] | None:
        """Rows of one emulated table in column order, or None if the table is unknown
        (not on this platform, or missing from this host's osquery)."""
        if name in self.missing_tables:
            return None
        if name in PLATFORM_TABLES and self.platform not in PLATFORM_TABLES[name]:
            return None
        if name in PACKAGE_TABLES:
            return _package_rows(self, name)
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


# Software: what each platform's package tables hold, (name, version, detail) per package.
# A host has most of its platform's base set, a version chosen per host, so the fleet shows
# a few versions of each package.
PACKAGE_SETS: dict[str, dict[str, list[tuple[str, tuple[str, ...], str]]]] = {
    "linux": {
        "deb_packages": [
            ("openssl", ("3.0.2-0ubuntu1.15", "3.0.2-0ubuntu1.18"), "amd64"),
            ("libssl3", ("3.0.2-0ubuntu1.15", "3.0.2-0ubuntu1.18"), "amd64"),
            ("bash", ("5.1-6ubuntu1.1",), "amd64"),
            ("coreutils", ("8.32-4.1ubuntu1.2",), "amd64"),
            ("curl", ("7.81.0-1ubuntu1.16", "7.81.0-1ubuntu1.18"), "amd64"),
            ("openssh-server", ("1:8.9p1-3ubuntu0.10",), "amd64"),
            ("python3", ("3.10.6-1~22.04.1",), "amd64"),
            ("sudo", ("1.9.9-1ubuntu2.4",), "amd64"),
            ("systemd", ("249.11-0ubuntu3.12",), "amd64"),
            ("osquery", ("5.23.1-1.linux",), "amd64"),
        ],
        "rpm_packages": [],  # an Ubuntu host: the table exists and is empty
        "python_packages": [
            ("requests", ("2.25.1", "2.31.0"), "/usr/lib/python3/dist-packages"),
            ("urllib3", ("1.26.5",), "/usr/lib/python3/dist-packages"),
        ],
        "chrome_extensions": [],
    },
    "darwin": {
        "apps": [
            ("Google Chrome.app", ("126.0.6478.127", "127.0.6533.89"), "com.google.Chrome"),
            ("Safari.app", ("17.5",), "com.apple.Safari"),
            ("Slack.app", ("4.38.125",), "com.tinyspeck.slackmacgap"),
        ],
        "homebrew_packages": [
            ("openssl@3", ("3.3.1", "3.3.2"), "/opt/homebrew"),
            ("git", ("2.45.2",), "/opt/homebrew"),
        ],
        "python_packages": [("pip", ("24.0",), "/Library/Python/3.9/site-packages")],
        "chrome_extensions": [
            ("Google Docs Offline", ("1.80.1",), "ghbmnnjooekpmoecnnnilnnbdlolhkhi"),
        ],
    },
    "windows": {
        "programs": [
            ("Google Chrome", ("126.0.6478.127", "127.0.6533.89"), "Google LLC"),
            ("7-Zip 23.01 (x64)", ("23.01",), "Igor Pavlov"),
            ("Microsoft Edge", ("126.0.2592.87",), "Microsoft Corporation"),
        ],
        "python_packages": [],
        "chrome_extensions": [
            ("Google Docs Offline", ("1.80.1",), "ghbmnnjooekpmoecnnnilnnbdlolhkhi"),
        ],
    },
}
PACKAGE_TABLES = frozenset(table for tables in PACKAGE_SETS.values() for table in tables)
# Tables that exist only on some platforms' osquery builds (specs/<platform>/*.table).
PLATFORM_TABLES: dict[str, frozenset[str]] = {
    "memory_info": frozenset({"linux"}),
    "mounts": frozenset({"linux", "darwin"}),
    "virtual_memory_info": frozenset({"darwin"}),
    "logical_drives": frozenset({"windows"}),
    "deb_packages": frozenset({"linux"}),
    "rpm_packages": frozenset({"linux"}),
    "apps": frozenset({"darwin"}),
    "homebrew_packages": frozenset({"darwin"}),
    "programs": frozenset({"windows"}),
}


def _installed_packages(platform: str, rng: random.Random) -> dict[str, list[tuple[str, str, str]]]:
    return {
        table: [(name, rng.choice(versions), detail) for name, versions, detail in base]
        for table, base in PACKAGE_SETS.get(platform, {}).items()
    }


def _package_rows(host: HostProfile, table: str) -> list[dict[str, str]]:
    if table == "chrome_extensions":  # a user table: one row per user's extension
        return [
            {"uid": str(uid), "name": name, "version": version, "identifier": detail,
             "profile": "Default"}
            for _, uid in host.users if uid
            for name, version, detail in host.packages.get(table, [])
        ]  # fmt: skip
    column = {"deb_packages": "arch", "rpm_packages": "arch", "programs": "publisher",
              "apps": "bundle_identifier", "homebrew_packages": "prefix",
              "python_packages": "path"}[table]  # fmt: skip
    version = "bundle_short_version" if table == "apps" else "version"
    return [
        {"name": name, version: v, column: detail}
        for name, v, detail in host.packages.get(table, [])
    ]


def _memory_info(host: HostProfile) -> list[dict[str, str]]:
    total = host.physical_memory
    return [{"memory_total": str(total), "memory_free": str(total // 4),
             "memory_available": str(total // 2), "buffers": str(total // 64),
             "cached": str(total // 8), "swap_total": "0", "swap_free": "0"}]  # fmt: skip


def _virtual_memory_info(host: HostProfile) -> list[dict[str, str]]:
    pages = host.physical_memory // 16384
    return [{"free": str(pages // 4), "active": str(pages // 3), "inactive": str(pages // 6),
             "wired": str(pages // 8), "page_size": "16384"}]  # fmt: skip


def _mounts(host: HostProfile) -> list[dict[str, str]]:
    def mount(path: str, device: str, kind: str, blocks: int, free: int) -> dict[str, str]:
        return {"device": device, "device_alias": device, "path": path, "type": kind,
                "blocks_size": "4096", "blocks": str(blocks), "blocks_free": str(free),
                "blocks_available": str(free - blocks // 20), "inodes": "6553600",
                "inodes_free": "6000000", "flags": "rw,relatime"}  # fmt: skip

    if host.platform == "darwin":
        return [mount("/", "/dev/disk3s1s1", "apfs", 120_000_000, 80_000_000),
                mount("/System/Volumes/Data", "/dev/disk3s5", "apfs", 120_000_000, 80_000_000),
                mount("/dev", "devfs", "devfs", 0, 0)]  # fmt: skip
    free = 26_000_000 - host.index * 1000 % 20_000_000
    return [mount("/", "/dev/sda1", "ext4", 26_000_000, free),
            mount("/proc", "proc", "proc", 0, 0),
            mount("/boot/efi", "/dev/sda15", "vfat", 26_000, 20_000)]  # fmt: skip


def _logical_drives(host: HostProfile) -> list[dict[str, str]]:
    return [{"device_id": "C:", "type": "Local Disk", "description": "Local Fixed Disk",
             "free_space": str(80 << 30), "size": str(256 << 30), "file_system": "NTFS",
             "boot_partition": "1"}]  # fmt: skip


def _interface_addresses(host: HostProfile) -> list[dict[str, str]]:
    lan = f"10.{host.index // 65536 % 256}.{host.index // 256 % 256}.{host.index % 256}"
    nic = {"linux": "eth0", "darwin": "en0", "windows": "Ethernet"}[host.platform]
    return [
        {"interface": "lo", "address": "127.0.0.1", "mask": "255.0.0.0", "broadcast": "",
         "point_to_point": "127.0.0.1", "type": "unknown"},
        {"interface": nic, "address": lan, "mask": "255.0.0.0", "broadcast": "10.255.255.255",
         "point_to_point": "", "type": "dhcp"},
    ]  # fmt: skip


def _interface_details(host: HostProfile) -> list[dict[str, str]]:
    nic = {"linux": "eth0", "darwin": "en0", "windows": "Ethernet"}[host.platform]
    mac = ":".join(f"{(host.index >> shift) & 255:02x}" for shift in (40, 32, 24, 16, 8, 0))
    return [
        {"interface": "lo", "mac": "00:00:00:00:00:00", "type": "24", "mtu": "65536"},
        {"interface": nic, "mac": "02:" + mac[3:], "type": "6", "mtu": "1500"},
    ]


def _logged_in_users(host: HostProfile) -> list[dict[str, str]]:
    return [
        {"type": "user", "user": name, "tty": "pts/0", "host": "10.0.0.5",
         "time": str(host.start_time + 600), "pid": str(host.pid + 100)}
        for name, uid in host.users if uid
    ]  # fmt: skip


_TABLES = {
    "os_version": _os_version,
    "osquery_info": _osquery_info,
    "system_info": _system_info,
    "platform_info": _platform_info,
    "processes": _processes,
    "users": _users,
    "uptime": _uptime,
    "memory_info": _memory_info,
    "virtual_memory_info": _virtual_memory_info,
    "mounts": _mounts,
    "logical_drives": _logical_drives,
    "interface_addresses": _interface_addresses,
    "interface_details": _interface_details,
    "logged_in_users": _logged_in_users,
}
