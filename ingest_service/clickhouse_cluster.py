"""Quarry on a ClickHouse cluster: the schema on every host, the exactly-once check, retention.

The cluster is the one named by QUARRY_CLICKHOUSE_CLUSTER in the servers' remote_servers
config; its hosts are read from `system.clusters` of any reachable host, so the schema
reaches hosts the ingest service does not write to. docs/adr/0010-clickhouse-cluster.md
explains the choices; in short:

- Ingest inserts into `<table>_local` (ReplicatedMergeTree) of one host: the insert returns
  once the part is committed in ZooKeeper, and the other replicas of that shard fetch it.
- Before a batch that may already be stored is inserted again, each shard is asked by a
  replica that is *caught up*: it has read its table's whole replication log from ZooKeeper
  and has no part left to fetch. Such a replica holds every part its shard committed, even
  one written through another host a moment ago. A shard without a caught-up reachable
  replica (the host that holds a part nobody fetched yet is down) cannot tell: the check
  fails and the replay retries, storing nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from clickhouse_driver import Client

from ingest_service.log_store import QueryResult, batch_rows_sql
from ingest_service.schema import (
    apply_schema,
    drop_expired_partitions,
    is_modern,
    local_table,
)
from quarry.runtime.clickhouse_sql import sql_string

log = logging.getLogger(__name__)

# A replica normally fetches a new part within milliseconds; wait this long before asking
# another replica of the shard.
CATCH_UP_WAIT_S = 2.0
CATCH_UP_POLL_S = 0.05

T = TypeVar("T")


class ClusterUnavailable(RuntimeError):
    """No host of the cluster (or of one shard) could answer what was asked."""


@dataclass(frozen=True)
class ClusterHost:
    shard: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CaughtUp:
    """Where one replica of a table stands against its replication log in ZooKeeper."""

    readonly: bool
    log_pointer: int
    last_log_entry: int  # -1: the log is empty
    inserts_in_queue: int

    @property
    def holds_every_part(self) -> bool:
        return (
            not self.readonly
            and self.log_pointer > self.last_log_entry
            and self.inserts_in_queue == 0
        )


class ClusterHosts:
    """Connections to every host of one cluster, each opened when first needed.

    `connect(address)` returns a client for one host (database `default`, so the schema can
    be created before `quarry` exists). Calls may come from several threads; one at a time.
    """

    def __init__(self, cluster: str, seeds: list[str], connect: Callable[[str], Client]) -> None:
        self.cluster = cluster
        self.seeds = seeds
        self.connect = connect
        self.clients: dict[str, Client] = {}
        self.hosts: list[ClusterHost] = []
        self.lock = threading.Lock()

    def client(self, address: str) -> Client:
        if address not in self.clients:
            self.clients[address] = self.connect(address)
        return self.clients[address]

    def members(self) -> list[ClusterHost]:
        """The cluster's hosts as the first reachable seed host lists them (read once)."""
        if self.hosts:
            return self.hosts
        sql = (
            "SELECT shard_num, host_address, port FROM system.clusters "
            f"WHERE cluster = {sql_string(self.cluster)} ORDER BY shard_num, replica_num"
        )
        errors = []
        for seed in self.seeds:
            try:
                rows = self.client(seed).execute(sql)
            except Exception as exc:
                errors.append(f"{seed}: {exc}")
                continue
            if not rows:
                raise ClusterUnavailable(
                    f"ClickHouse at {seed} has no cluster {self.cluster!r} in its "
                    "remote_servers config (QUARRY_CLICKHOUSE_CLUSTER)"
                )
            self.hosts = [
                ClusterHost(int(shard), str(host), int(port)) for shard, host, port in rows
            ]
            return self.hosts
        raise ClusterUnavailable(f"no ClickHouse host answered: {'; '.join(errors)}")

    def shards(self) -> dict[int, list[ClusterHost]]:
        by_shard: dict[int, list[ClusterHost]] = {}
        for host in self.members():
            by_shard.setdefault(host.shard, []).append(host)
        return by_shard

    def on_each_reachable(self, action: Callable[[Client], T]) -> Iterator[tuple[ClusterHost, T]]:
        """Run `action` on every host that answers; hosts that do not are logged and skipped."""
        for host in self.members():
            try:
                yield host, action(self.client(host.address))
            except Exception as exc:
                self.forget(host)
                log.warning("ClickHouse host %s skipped: %s", host.address, exc)

    def on_one_replica_per_shard(
        self, action: Callable[[Client], T], usable: Callable[[Client], bool] = lambda _: True
    ) -> dict[int, T]:
        """`action` on the first replica of each shard that answers and is `usable`."""
        answers: dict[int, T] = {}
        for shard, replicas in self.shards().items():
            for host in replicas:
                try:
                    client = self.client(host.address)
                    if usable(client):
                        answers[shard] = action(client)
                        break
                except Exception as exc:
                    self.forget(host)
                    log.warning("ClickHouse host %s skipped: %s", host.address, exc)
            else:
                raise ClusterUnavailable(
                    f"no replica of shard {shard} of cluster {self.cluster!r} can answer now"
                )
        return answers

    def forget(self, host: ClusterHost) -> None:
        # The next use reconnects: a host that was down may be back by then.
        client = self.clients.pop(host.address, None)
        if client is not None:
            client.disconnect()

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
        self.clients.clear()


class ClusterSchema:
    """What the ClickHouse server store does differently on a cluster."""

    def __init__(self, hosts: ClusterHosts, database: str) -> None:
        self.hosts = hosts
        self.database = database

    def ensure_schema(self, days: Mapping[str, int]) -> None:
        """The tables and views on every host that answers; at least one must."""

        def apply(client: Client) -> None:
            modern = is_modern(str(client.execute("SELECT version()")[0][0]))
            apply_schema(client.execute, self.database, modern, days, self.hosts.cluster)

        with self.hosts.lock:
            done = [host.address for host, _ in self.hosts.on_each_reachable(apply)]
            missed = [host.address for host in self.hosts.members() if host.address not in done]
        if not done:
            raise ClusterUnavailable(f"no host of cluster {self.hosts.cluster!r} answered")
        if missed:
            # Its replicated tables are still in ZooKeeper: the next start creates them.
            log.warning("schema not created on %s (unreachable); done on %s", missed, done)

    def stored_batch_rows(self, table: str, batch_ids: Iterable[str]) -> dict[str, int]:
        """Rows per batch over every shard, each read from a caught-up replica."""
        local = local_table(table, self.hosts.cluster)
        sql = batch_rows_sql(self.database, local, list(batch_ids))

        def caught_up(client: Client) -> bool:
            return wait_until_caught_up(client, self.database, local)

        with self.hosts.lock:
            per_shard = self.hosts.on_one_replica_per_shard(
                lambda client: client.execute(sql), caught_up
            )
        counts: dict[str, int] = {}
        for rows in per_shard.values():
            for batch_id, count in rows:
                counts[str(batch_id)] = counts.get(str(batch_id), 0) + int(count)
        return counts

    def drop_expired_partitions(self, days: Mapping[str, int]) -> list[tuple[str, str]]:
        """Drop on one replica per shard; ZooKeeper carries each drop to the other replicas."""

        def drop(client: Client) -> list[tuple[str, str]]:
            return drop_expired_partitions(
                HostQueries(client), days, database=self.database, cluster=self.hosts.cluster
            )

        with self.hosts.lock:
            per_shard = self.hosts.on_one_replica_per_shard(drop)
        return sorted({pair for dropped in per_shard.values() for pair in dropped})


class HostQueries:
    """One host's client as the `query` drop_expired_partitions expects."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def query(self, sql: str) -> QueryResult:
        rows = self.client.execute(sql)
        return QueryResult(columns=[], types=[], rows=[list(row) for row in rows])


def replica_position(client: Client, database: str, table: str) -> CaughtUp:
    status = client.execute(
        "SELECT is_readonly, log_pointer, inserts_in_queue, zookeeper_path FROM system.replicas "
        f"WHERE database = {sql_string(database)} AND table = {sql_string(table)}"
    )
    if not status:
        raise ClusterUnavailable(f"{database}.{table} is not a replicated table on this host")
    readonly, log_pointer, inserts_in_queue, zookeeper_path = status[0]
    # system.replicas' log_max_index reads 0 both for an empty log and for one entry, so
    # ask ZooKeeper for the entries' names (log-0000000042).
    entries = client.execute(
        f"SELECT name FROM system.zookeeper WHERE path = {sql_string(zookeeper_path + '/log')}"
    )
    last_entry = max((int(str(name).removeprefix("log-")) for (name,) in entries), default=-1)
    return CaughtUp(bool(readonly), int(log_pointer), last_entry, int(inserts_in_queue))


def wait_until_caught_up(client: Client, database: str, table: str) -> bool:
    """Whether this replica holds every part committed for its shard (waits a little)."""
    deadline = time.monotonic() + CATCH_UP_WAIT_S
    while True:
        position = replica_position(client, database, table)
        if position.holds_every_part:
            return True
        if time.monotonic() >= deadline:
            log.warning("%s.%s on this replica is behind its log: %s", database, table, position)
            return False
        time.sleep(CATCH_UP_POLL_S)
