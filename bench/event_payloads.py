"""The `events` workload's log lines: every flush of every host carries a small event batch.

A fleet that schedules osquery's evented tables (process_events, socket_events) logs a few
new rows from every host at every logger tick, whatever else happens. `EventPayloads` plays
one such host: `due_records(now)` gives the flush's event-format result lines (half process
events, half socket events, 20 by default), each query run with its own growing `counter`;
`status_records(now)` gives a batch of status lines every 60 s (6 log intervals at Fleet's
10 s; runs with shorter intervals keep the ratio), at a random phase per host.
It has `HostPayloads`' interface (bench/payloads.py), so bench/fleet.py drives either.
`config_for_events()` is the osquery config that schedules these queries.

`numbered_log_body_factory` builds the probes' log POSTs (bench/__main__.py): N event lines,
gzip, every line carrying the POST's number as its `counter`, so the POST's rows can be
counted in ClickHouse.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from typing import Any

import orjson

from bench.payloads import config_for_packs
from tests.emulator import HostProfile, log_records

EVENT_LINES_PER_FLUSH = 20
STATUS_EVERY_FLUSHES = 6  # a status batch every 60 s at Fleet's 10 s log interval
STATUS_LINES_PER_BATCH = 3
EVENTS_PACK = "events"
EVENT_QUERIES = {
    "process_events": "SELECT pid, parent, path, cmdline, cwd, uid, euid, time "
    "FROM process_events;",
    "socket_events": "SELECT action, pid, path, family, protocol, local_address, "
    "remote_address, local_port, remote_port, time FROM socket_events;",
}
COMMANDS = [
    ("/usr/bin/bash", "bash -c /usr/local/bin/healthcheck"),
    ("/usr/bin/curl", "curl -fsS http://127.0.0.1:8080/health"),
    ("/usr/bin/python3", "python3 /opt/app/worker.py --once"),
    ("/usr/bin/git", "git fetch --quiet origin"),
    ("/usr/sbin/logrotate", "logrotate /etc/logrotate.conf"),
    ("/usr/bin/sleep", "sleep 5"),
]
REMOTES = ["10.0.0.53", "10.0.4.17", "172.16.3.9", "192.168.10.20", "140.82.121.4"]
MARKER_COUNTER = 987_654_321


def process_event_row(host: HostProfile, rng: random.Random, unix_time: int) -> dict[str, str]:
    path, cmdline = rng.choice(COMMANDS)
    _user, uid = rng.choice(host.users)
    return {
        "pid": str(rng.randrange(1000, 4_000_000)),
        "parent": str(host.pid + rng.randrange(1, 500)),
        "path": path,
        "cmdline": cmdline,
        "cwd": "/" if uid == 0 else f"/home/{_user}",
        "uid": str(uid),
        "euid": str(uid),
        "time": str(unix_time - rng.randrange(10)),
    }


def socket_event_row(host: HostProfile, rng: random.Random, unix_time: int) -> dict[str, str]:
    path, _cmdline = rng.choice(COMMANDS)
    return {
        "action": rng.choice(("connect", "bind", "accept")),
        "pid": str(rng.randrange(1000, 4_000_000)),
        "path": path,
        "family": "2",
        "protocol": "6",
        "local_address": f"10.{host.index // 250 % 250}.{host.index % 250}.2",
        "remote_address": rng.choice(REMOTES),
        "local_port": str(rng.randrange(32768, 61000)),
        "remote_port": str(rng.choice((53, 80, 443, 5432, 8080))),
        "time": str(unix_time - rng.randrange(10)),
    }


ROW_BUILDERS = {"process_events": process_event_row, "socket_events": socket_event_row}


class EventPayloads:
    """One host of the `events` workload: an event batch every flush, status every 6th."""

    def __init__(
        self,
        profile: HostProfile,
        host_identifier: str,
        *,
        seed: int = 0,
        started_at: float,
        log_interval_s: float = 10.0,
        lines_per_flush: int = EVENT_LINES_PER_FLUSH,
    ) -> None:
        self.profile = profile
        self.host_identifier = host_identifier
        self.rng = random.Random(f"events:{seed}:{profile.index}")
        self.lines_per_flush = lines_per_flush
        self.status_interval_s = STATUS_EVERY_FLUSHES * log_interval_s
        self.next_status = started_at + self.rng.uniform(0, self.status_interval_s)
        self.counters = dict.fromkeys(EVENT_QUERIES, -1)

    def due_records(self, now: float) -> list[dict[str, Any]]:
        """This flush's event lines: the first half process events, the rest socket events."""
        unix_time = int(now)
        half = self.lines_per_flush // 2
        shares = {"process_events": half, "socket_events": self.lines_per_flush - half}
        records: list[dict[str, Any]] = []
        for query, count in shares.items():
            self.counters[query] += 1
            build = ROW_BUILDERS[query]
            records += log_records.event_records(
                f"pack_{EVENTS_PACK}_{query}",
                self.host_identifier,
                unix_time,
                added=[build(self.profile, self.rng, unix_time) for _ in range(count)],
                counter=self.counters[query],
            )
        return records

    def status_records(self, now: float) -> list[dict[str, Any]]:
        """A batch of status lines when its time has come (every 6 flushes), else none."""
        if now < self.next_status:
            return []
        self.next_status = max(self.next_status + self.status_interval_s, now)
        unix_time = int(now)
        return [
            log_records.status_record(
                self.host_identifier,
                unix_time,
                f"Scheduled query pack_{EVENTS_PACK}_{query} was executed with an average of "
                f"{self.rng.randrange(5, 90)}ms and {self.rng.randrange(1, 32)}MB in the last run",
                severity=log_records.SEVERITY_WARNING,
                filename="scheduler.cpp",
                line=107,
                version=self.profile.osquery_version,
            )
            for query in [*EVENT_QUERIES, "process_events"][:STATUS_LINES_PER_BATCH]
        ]


def config_for_events(
    *, config_interval_s: float = 60, log_interval_s: float = 10, distributed_interval_s: float = 10
) -> dict[str, Any]:
    """The osquery config of the `events` workload: the evented queries every log interval."""
    config = config_for_packs(
        config_interval_s=config_interval_s,
        log_interval_s=log_interval_s,
        distributed_interval_s=distributed_interval_s,
    )
    interval = max(1, round(log_interval_s))
    config["packs"] = {
        EVENTS_PACK: {
            "queries": {
                name: {"query": sql, "interval": interval} for name, sql in EVENT_QUERIES.items()
            }
        }
    }
    return config


def numbered_log_body_factory(
    node_key: str, host: str, query_name: str, lines: int
) -> Callable[[int], bytes]:
    """A gzip log POST of `lines` event lines whose `counter` is the request's number.

    The JSON is built once with a marker in place of the counter, so a request costs a
    replace and a gzip (level 1: the server's gunzip is the same for any level, and the
    client shares the machine).
    """
    records = log_records.event_records(
        query_name, host, 1_736_072_430, counter=MARKER_COUNTER,
        added=[{"pid": str(i), "name": f"proc{i}", "path": f"/usr/bin/proc{i}"}
               for i in range(lines)],
    )  # fmt: skip
    template = orjson.dumps({"data": records, "log_type": "result", "node_key": node_key})
    marker = f'"counter":{MARKER_COUNTER}'.encode()

    def body(number: int) -> bytes:
        return gzip.compress(template.replace(marker, f'"counter":{number}'.encode()), 1)

    return body
