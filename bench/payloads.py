"""Realistic scheduled-query results for simulated hosts: two packs, like Fleet's osquery-perf.

`PACKS` describes two packs of six queries each; `config_for_packs()` is the osquery config
that schedules them (set it on the server before a run). `HostPayloads` plays one host's
scheduler: `due_records(now)` returns the result records of every query whose time has come,
built with `tests.emulator.log_records` so the bytes are osquery's. Differential queries send
their full result set first (counter 0, all rows "added"), then only changes (processes come
and go; most other tables rarely change, and a run without changes logs nothing). Snapshot
queries send every row each run. Everything is deterministic from (seed, host index).

Rows are counted exactly as ingest flattens them (`result_rows`): an event record is one row,
a snapshot record one row per element.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.emulator import HostProfile, log_records

Row = dict[str, str]
RowBuilder = Callable[[HostProfile, random.Random], list[Row]]

# osquery runs a query when its interval comes round, which for an hourly query can be an hour
# after start. A benchmark lasts minutes, so every query first runs within this window.
FIRST_RUN_WINDOW_S = 60.0
# Share of log flushes that carry a warning status line (osquery's usual chatter).
STATUS_LINE_SHARE = 0.1


@dataclass(frozen=True)
class ScheduledQuery:
    pack: str
    name: str
    sql: str
    interval_s: int
    rows: RowBuilder
    snapshot: bool = False
    # Per run of a differential query: chance that the table changed, and rows swapped then.
    change_chance: float = 0.0
    changed_rows: int = 1

    @property
    def logged_name(self) -> str:
        """The name osquery logs: pack_<pack>_<query> (default --pack_delimiter)."""
        return f"pack_{self.pack}_{self.name}"


# -- row builders: column names and values as osquery's tables give them ----------------

DAEMONS = [
    ("systemd-journald", "/usr/lib/systemd/systemd-journald"),
    ("systemd-udevd", "/usr/lib/systemd/systemd-udevd"),
    ("systemd-resolved", "/usr/lib/systemd/systemd-resolved"),
    ("systemd-timesyncd", "/usr/lib/systemd/systemd-timesyncd"),
    ("systemd-logind", "/usr/lib/systemd/systemd-logind"),
    ("systemd-networkd", "/usr/lib/systemd/systemd-networkd"),
    ("dbus-daemon", "/usr/bin/dbus-daemon"),
    ("cron", "/usr/sbin/cron"),
    ("rsyslogd", "/usr/sbin/rsyslogd"),
    ("sshd", "/usr/sbin/sshd"),
    ("chronyd", "/usr/sbin/chronyd"),
    ("containerd", "/usr/bin/containerd"),
    ("dockerd", "/usr/bin/dockerd"),
    ("nginx", "/usr/sbin/nginx"),
    ("postgres", "/usr/lib/postgresql/14/bin/postgres"),
    ("node_exporter", "/usr/local/bin/node_exporter"),
    ("agetty", "/sbin/agetty"),
    ("polkitd", "/usr/lib/polkit-1/polkitd"),
    ("unattended-upgr", "/usr/bin/python3"),
    ("multipathd", "/sbin/multipathd"),
]
KERNEL_THREADS = ["kthreadd", "rcu_gp", "rcu_par_gp", "kworker/{cpu}:{n}", "ksoftirqd/{cpu}"]
KERNEL_THREADS += ["migration/{cpu}", "cpuhp/{cpu}", "kcompactd0", "khugepaged", "kswapd0"]
USER_COMMANDS = [
    ("bash", "/usr/bin/bash", "-bash"),
    ("python3", "/usr/bin/python3", "python3 /opt/app/worker.py --queue default"),
    ("node", "/usr/bin/node", "node /srv/api/server.js"),
    ("java", "/usr/lib/jvm/java-17/bin/java", "java -Xmx2g -jar /opt/svc/service.jar"),
    ("nginx", "/usr/sbin/nginx", "nginx: worker process"),
    ("postgres", "/usr/lib/postgresql/14/bin/postgres", "postgres: app appdb [local] idle"),
    ("sleep", "/usr/bin/sleep", "sleep 60"),
    ("sshd", "/usr/sbin/sshd", "sshd: deploy@pts/0"),
]
PROCESSES_AT_START = 200


def process_row(
    pid: int, name: str, path: str, cmdline: str, uid: int, parent: int, start: int
) -> Row:
    return {
        "pid": str(pid),
        "name": name,
        "path": path,
        "cmdline": cmdline,
        "uid": str(uid),
        "parent": str(parent),
        "start_time": str(start),
    }


def processes_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    start = host.start_time
    rows = [process_row(1, "systemd", "/usr/lib/systemd/systemd", "/sbin/init", 0, 0, start)]
    pid = 2
    for template in KERNEL_THREADS * 4:
        name = template.format(cpu=rng.randrange(host.cpu_cores), n=rng.randrange(3))
        rows.append(process_row(pid, name, "", "", 0, 2, start))
        pid += 1
    for name, path in DAEMONS:
        pid += rng.randrange(1, 40)
        rows.append(process_row(pid, name, path, path, 0, 1, start + rng.randrange(1, 30)))
    rows += processes_rows_for(host)
    while len(rows) < PROCESSES_AT_START:
        pid += rng.randrange(1, 200)
        rows.append(user_process_row(host, rng, pid))
    return rows


def processes_rows_for(host: HostProfile) -> list[Row]:
    """The osqueryd watcher and worker, so a live query and the schedule agree."""
    watcher, worker = host.pid - 2, host.pid
    path = "/opt/osquery/bin/osqueryd"
    return [
        process_row(
            watcher,
            "osqueryd",
            path,
            f"{path} --flagfile=/etc/osquery/osquery.flags",
            0,
            1,
            host.start_time,
        ),
        process_row(
            worker,
            "osqueryd",
            path,
            f"{path} --flagfile=/etc/osquery/osquery.flags",
            0,
            watcher,
            host.start_time,
        ),
    ]


def user_process_row(host: HostProfile, rng: random.Random, pid: int) -> Row:
    name, path, cmdline = rng.choice(USER_COMMANDS)
    _username, uid = rng.choice(host.users)
    return process_row(pid, name, path, cmdline, uid, 1, host.start_time + rng.randrange(60, 86400))


def change_processes(
    rows: list[Row], host: HostProfile, rng: random.Random, count: int
) -> list[Row]:
    """Some short-lived processes end and new ones start (pids only grow)."""
    changed = [row for row in rows if row["uid"] != "0" or row["name"] in ("sleep", "bash")]
    ended = set(map(id, rng.sample(changed, min(count, len(changed)))))
    kept = [row for row in rows if id(row) not in ended]
    next_pid = max(int(row["pid"]) for row in rows) + 1
    started = [
        user_process_row(host, rng, next_pid + i * rng.randrange(1, 50)) for i in range(count)
    ]
    return kept + started


SYSTEM_ACCOUNTS = ["daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp"]
SYSTEM_ACCOUNTS += ["proxy", "www-data", "backup", "list", "irc", "nobody", "systemd-network"]
SYSTEM_ACCOUNTS += ["systemd-resolve", "messagebus", "systemd-timesync", "syslog", "_apt", "sshd"]


def users_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    rows = host.table("users") or []  # the host's people, as the emulator's tables give them
    for offset, name in enumerate(SYSTEM_ACCOUNTS, start=1):
        uid = 65534 if name == "nobody" else offset if offset < 100 else 100 + offset
        shell = "/usr/sbin/nologin"
        rows.append(
            {
                "uid": str(uid),
                "gid": str(uid),
                "username": name,
                "description": name,
                "directory": "/nonexistent" if name == "nobody" else f"/var/lib/{name}",
                "shell": shell,
                "uuid": "",
            }
        )
    return rows


LISTENING = [("sshd", 22), ("nginx", 80), ("nginx", 443), ("postgres", 5432), ("node", 3000)]
LISTENING += [("systemd-resolved", 53), ("node_exporter", 9100), ("containerd", 10010)]


def listening_ports_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    rows = []
    for index, (_service, port) in enumerate(LISTENING):
        for family, address in (("2", "0.0.0.0"), ("10", "::")):
            rows.append(
                {
                    "pid": str(host.pid + 100 + index),
                    "port": str(port),
                    "protocol": "6",
                    "family": family,
                    "address": address,
                    "fd": str(3 + index),
                    "socket": str(20000 + rng.randrange(50000)),
                    "path": "",
                    "net_namespace": "4026531840",
                }
            )
    return rows


def logged_in_users_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    return [
        {
            "type": "user",
            "user": name,
            "tty": f"pts/{n}",
            "host": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "time": str(host.start_time + rng.randrange(86400)),
            "pid": str(host.pid + 500 + n),
        }
        for n, (name, _uid) in enumerate(host.users)
    ]


CRON_COMMANDS = [
    ("17", "*", "cd / && run-parts --report /etc/cron.hourly", "/etc/crontab"),
    ("25", "6", "test -x /usr/sbin/anacron || run-parts --report /etc/cron.daily", "/etc/crontab"),
    ("47", "6", "test -x /usr/sbin/anacron || run-parts --report /etc/cron.weekly", "/etc/crontab"),
    ("*/5", "*", "/usr/local/bin/backup-check >/dev/null 2>&1", "/var/spool/cron/crontabs/root"),
    ("0", "3", "/usr/bin/certbot renew --quiet", "/etc/cron.d/certbot"),
    ("30", "2", "/usr/sbin/logrotate /etc/logrotate.conf", "/etc/cron.daily/logrotate"),
]


def crontab_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    return [
        {
            "event": "",
            "minute": minute,
            "hour": hour,
            "day_of_month": "*",
            "month": "*",
            "day_of_week": "*",
            "command": command,
            "path": path,
        }
        for minute, hour, command, path in CRON_COMMANDS
    ]


KERNEL_MODULES = ["ext4", "mbcache", "jbd2", "xfs", "libcrc32c", "nf_tables", "nfnetlink"]
KERNEL_MODULES += ["overlay", "br_netfilter", "bridge", "stp", "llc", "ip_tables", "x_tables"]
KERNEL_MODULES += ["tls", "nls_iso8859_1", "intel_rapl_msr", "kvm_intel", "kvm", "irqbypass"]
KERNEL_MODULES += ["crct10dif_pclmul", "crc32_pclmul", "ghash_clmulni_intel", "aesni_intel"]
KERNEL_MODULES += ["crypto_simd", "cryptd", "virtio_net", "net_failover", "failover", "psmouse"]
KERNEL_MODULES += ["virtio_blk", "virtio_scsi", "i2c_piix4", "input_leds", "serio_raw", "msr"]
KERNEL_MODULES += ["efi_pstore", "dm_multipath", "scsi_dh_rdac", "scsi_dh_emc", "autofs4"]


def kernel_modules_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    return [
        {
            "name": name,
            "size": str(rng.randrange(8, 900) * 1024),
            "used_by": "-",
            "status": "Live",
            "address": f"0xffffffffc0{rng.getrandbits(24):06x}",
        }
        for name in KERNEL_MODULES
    ]


def usb_devices_rows(host: HostProfile, rng: random.Random) -> list[Row]:
    devices = [("1d6b", "0002", "Linux Foundation", "2.0 root hub", "09")]
    devices += [("0627", "0001", "Adomax Technology", "QEMU USB Tablet", "03")]
    devices += [("046d", "c52b", "Logitech", "Unifying Receiver", "03")]
    return [
        {
            "usb_address": str(n + 1),
            "usb_port": str(n + 1),
            "vendor": vendor,
            "vendor_id": vendor_id,
            "version": "0.00",
            "model": model,
            "model_id": model_id,
            "serial": f"{host.hardware_serial}-{n}",
            "class": usb_class,
            "subclass": "00",
            "protocol": "00",
            "removable": "0" if n == 0 else "1",
        }
        for n, (vendor_id, model_id, vendor, model, usb_class) in enumerate(devices)
    ]


def profile_table(name: str) -> RowBuilder:
    """Rows of a table the emulator's HostProfile already knows (one per host)."""

    def rows(host: HostProfile, rng: random.Random) -> list[Row]:
        return host.table(name) or []

    return rows


PACKS: tuple[ScheduledQuery, ...] = (
    ScheduledQuery(
        "perf_security",
        "processes",
        "SELECT pid, name, path, cmdline, uid, parent, start_time FROM processes;",
        60,
        processes_rows,
        change_chance=1.0,
        changed_rows=3,
    ),
    ScheduledQuery(
        "perf_security",
        "listening_ports",
        "SELECT * FROM listening_ports;",
        120,
        listening_ports_rows,
        change_chance=0.2,
    ),
    ScheduledQuery(
        "perf_security",
        "logged_in_users",
        "SELECT * FROM logged_in_users;",
        120,
        logged_in_users_rows,
        change_chance=0.1,
    ),
    ScheduledQuery("perf_security", "crontab", "SELECT * FROM crontab;", 300, crontab_rows),
    ScheduledQuery(
        "perf_security",
        "kernel_modules",
        "SELECT name, size, used_by, status, address FROM kernel_modules;",
        300,
        kernel_modules_rows,
    ),
    ScheduledQuery(
        "perf_security",
        "usb_devices",
        "SELECT * FROM usb_devices;",
        300,
        usb_devices_rows,
        change_chance=0.05,
    ),
    ScheduledQuery(
        "perf_inventory",
        "os_version",
        "SELECT * FROM os_version;",
        3600,
        profile_table("os_version"),
        snapshot=True,
    ),
    ScheduledQuery(
        "perf_inventory",
        "osquery_info",
        "SELECT * FROM osquery_info;",
        600,
        profile_table("osquery_info"),
        snapshot=True,
    ),
    ScheduledQuery(
        "perf_inventory",
        "system_info",
        "SELECT * FROM system_info;",
        3600,
        profile_table("system_info"),
        snapshot=True,
    ),
    ScheduledQuery(
        "perf_inventory",
        "uptime",
        "SELECT * FROM uptime;",
        300,
        profile_table("uptime"),
        snapshot=True,
    ),
    ScheduledQuery(
        "perf_inventory",
        "platform_info",
        "SELECT * FROM platform_info;",
        3600,
        profile_table("platform_info"),
        snapshot=True,
    ),
    ScheduledQuery(
        "perf_inventory", "users", "SELECT * FROM users;", 600, users_rows, change_chance=0.02
    ),
)


def scaled_interval_s(query: ScheduledQuery, interval_scale: float) -> int:
    """A query's interval times `interval_scale`, as the whole seconds osquery accepts."""
    return max(1, round(query.interval_s * interval_scale))


def config_for_packs(
    *,
    config_interval_s: float = 60,
    log_interval_s: float = 10,
    distributed_interval_s: float = 10,
    interval_scale: float = 1.0,
) -> dict[str, Any]:
    """The osquery config (options and packs) that schedules `PACKS` at these intervals."""
    packs: dict[str, dict[str, Any]] = {}
    for query in PACKS:
        entry: dict[str, Any] = {
            "query": query.sql,
            "interval": scaled_interval_s(query, interval_scale),
        }
        if query.snapshot:
            entry["snapshot"] = True
        packs.setdefault(query.pack, {"queries": {}})["queries"][query.name] = entry
    return {
        "options": {
            "config_refresh": max(1, math.ceil(config_interval_s)),
            "logger_tls_period": max(1, math.ceil(log_interval_s)),
            "distributed_interval": max(1, math.ceil(distributed_interval_s)),
            "logger_tls_max_lines": 1024,
        },
        "packs": packs,
    }


def result_rows(record: dict[str, Any]) -> int:
    """Rows ingest makes of one result record: one per event, one per snapshot element."""
    if "snapshot" in record:
        return len(record["snapshot"])
    if "diffResults" in record:
        diff = record["diffResults"]
        return len(diff["added"]) + len(diff["removed"])
    return 1


@dataclass
class QueryState:
    """One scheduled query on one host: when it runs next and what it last returned."""

    query: ScheduledQuery
    interval_s: int
    next_run: float
    rows: list[Row] = field(default_factory=list)
    counter: int = -1  # -1: never ran; the first run logs counter 0


class HostPayloads:
    """One host's scheduler: which records each log flush carries."""

    def __init__(
        self,
        profile: HostProfile,
        host_identifier: str,
        *,
        seed: int = 0,
        started_at: float,
        interval_scale: float = 1.0,
    ) -> None:
        self.profile = profile
        self.host_identifier = host_identifier
        self.rng = random.Random(f"bench:{seed}:{profile.index}")
        window = FIRST_RUN_WINDOW_S * interval_scale
        self.queries = [
            QueryState(
                query=query,
                interval_s=scaled_interval_s(query, interval_scale),
                next_run=started_at
                + self.rng.uniform(0, min(window, query.interval_s * interval_scale)),
            )
            for query in PACKS
        ]
        self.flushes = 0

    def due_records(self, now: float) -> list[dict[str, Any]]:
        """Result records of every query due by `now`, in osquery's event format."""
        records: list[dict[str, Any]] = []
        for state in self.queries:
            if state.next_run <= now:
                records += self._run(state, int(now))
                # A late run does not run twice: osquery's scheduler skips missed ticks.
                state.next_run = max(state.next_run + state.interval_s, now)
        return records

    def status_records(self, now: float) -> list[dict[str, Any]]:
        """Status lines for this flush: start-up lines first, then an occasional warning."""
        self.flushes += 1
        unix_time = int(now)
        version = self.profile.osquery_version
        if self.flushes == 1:
            return [
                log_records.status_record(
                    self.host_identifier,
                    unix_time,
                    message,
                    filename=filename,
                    line=line,
                    version=version,
                )
                for message, filename, line in (
                    (f"osquery initialized [version={version}]", "init.cpp", 426),
                    ("Event publisher not enabled: BPFEventPublisher", "eventfactory.cpp", 156),
                    ("Scheduling 12 queries from 2 packs", "config.cpp", 912),
                )
            ]
        if self.rng.random() >= STATUS_LINE_SHARE:
            return []
        state = self.rng.choice(self.queries)
        message = (
            f"Scheduled query {state.query.logged_name} was executed with an average of "
            f"{self.rng.randrange(5, 900)}ms and {self.rng.randrange(1, 64)}MB in the last run"
        )
        return [
            log_records.status_record(
                self.host_identifier,
                unix_time,
                message,
                severity=log_records.SEVERITY_WARNING,
                filename="scheduler.cpp",
                line=107,
                version=version,
            )
        ]

    def _run(self, state: QueryState, unix_time: int) -> list[dict[str, Any]]:
        query = state.query
        if query.snapshot:
            rows = query.rows(self.profile, self.rng)
            return [
                log_records.snapshot_record(
                    query.logged_name, self.host_identifier, unix_time, rows
                )
            ]
        if state.counter < 0:
            state.rows = query.rows(self.profile, self.rng)
            state.counter = 0
            return self._events(state, unix_time, added=state.rows, removed=[])
        if self.rng.random() >= query.change_chance:
            return []  # no change: osquery logs nothing for this run
        new_rows = self._changed(state)
        old_keys = {_row_key(row) for row in state.rows}
        new_keys = {_row_key(row) for row in new_rows}
        added = [row for row in new_rows if _row_key(row) not in old_keys]
        removed = [row for row in state.rows if _row_key(row) not in new_keys]
        state.rows = new_rows
        if not added and not removed:
            return []
        state.counter += 1
        return self._events(state, unix_time, added=added, removed=removed)

    def _changed(self, state: QueryState) -> list[Row]:
        if state.query.name == "processes":
            return change_processes(state.rows, self.profile, self.rng, state.query.changed_rows)
        # Other tables: fresh values for some rows (a port's socket, a module's address...).
        fresh = state.query.rows(self.profile, self.rng)
        keep = len(state.rows) - state.query.changed_rows
        return state.rows[:keep] + fresh[keep:]

    def _events(
        self, state: QueryState, unix_time: int, *, added: list[Row], removed: list[Row]
    ) -> list[dict[str, Any]]:
        return log_records.event_records(
            state.query.logged_name,
            self.host_identifier,
            unix_time,
            added=added,
            removed=removed,
            counter=state.counter,
        )


def _row_key(row: Row) -> tuple[tuple[str, str], ...]:
    return tuple(row.items())
