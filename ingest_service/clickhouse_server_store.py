"""Log store on a ClickHouse server, through clickhouse-driver's native protocol.

Works with Debian's ClickHouse 18.16 and with modern servers. With 18.16, rows must go as
the data argument of `execute`: inline VALUES or FORMAT JSONEachRow text makes the server
wait until the socket times out.

The URL may list several hosts (`clickhouse://user:pw@h1:9000,h2:9000/quarry`): the driver
connects to the first that answers and moves to the next when its host fails. With a
cluster name (QUARRY_CLICKHOUSE_CLUSTER), rows go into that host's `<table>_local`
replicated table, and the schema, the exactly-once check and retention go through
`clickhouse_cluster`.

Read-only queries (`quarry sql` below the admin role) run on the query connection with
the query setting `readonly = 1`, so the server refuses any write (docs/security.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from ingest_service.clickhouse_cluster import ClusterHosts, ClusterSchema
from ingest_service.log_store import (
    DATABASE,
    READONLY_ERROR_CODE,
    QueryResult,
    ReadOnlyRefused,
    batch_rows_sql,
)
from ingest_service.schema import (
    apply_schema,
    drop_expired_partitions,
    is_modern,
    local_table,
    retention_days,
)

# The driver logs a full traceback per failed connect; the service logs one line per failed
# insert instead.
logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)

# Without these an unreachable server blocks an insert (and so every ack) for minutes.
DEFAULT_URL_OPTIONS = {"connect_timeout": "5", "send_receive_timeout": "60"}
# Analysts' IN (SELECT ... FROM quarry.results) on a cluster of several shards: read the
# subquery once over the cluster (GLOBAL IN) instead of refusing it.
CLUSTER_QUERY_OPTIONS = {"distributed_product_mode": "global"}


def url_hosts(url: str) -> list[str]:
    """The host:port entries of a URL's comma-separated host list, in order."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    return [host.strip() for host in hosts.split(",") if host.strip()]


def client_url(
    url: str, database: str, only_host: str = "", defaults: Mapping[str, str] | None = None
) -> str:
    """The URL with its database replaced and default timeouts (and `defaults`) added where
    missing.

    The driver's URL takes one host and the others as `alt_hosts`; with `only_host`, the
    URL names that host alone.
    """
    parts = urlsplit(url)
    options = {**DEFAULT_URL_OPTIONS, **(defaults or {}), **dict(parse_qsl(parts.query))}
    user, at, _ = parts.netloc.rpartition("@")
    hosts = [only_host] if only_host else url_hosts(url)
    if len(hosts) > 1:
        options["alt_hosts"] = ",".join(hosts[1:])
    elif only_host:
        options.pop("alt_hosts", None)
    netloc = f"{user}{at}{hosts[0]}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}", query=urlencode(options)))


class ClickHouseServerStore:
    """A LogStore on a ClickHouse server (or cluster); one connection for inserts, one for
    queries, each to the first of the URL's hosts that answers."""

    def __init__(self, url: str, cluster: str = "") -> None:
        self.url = url
        self.cluster = cluster
        # A connection cannot be shared between threads: one each, each behind a lock.
        self.insert_client = Client.from_url(client_url(url, DATABASE))
        self.query_client = Client.from_url(
            client_url(url, DATABASE, defaults=CLUSTER_QUERY_OPTIONS if cluster else None)
        )
        self.insert_lock = threading.Lock()
        self.query_lock = threading.Lock()
        self.on_cluster: ClusterSchema | None = None
        if cluster:
            hosts = ClusterHosts(
                cluster,
                url_hosts(url),
                lambda address: Client.from_url(client_url(url, "default", address)),
            )
            self.on_cluster = ClusterSchema(hosts, DATABASE)

    def ensure_schema(self) -> None:
        if self.on_cluster is not None:
            self.on_cluster.ensure_schema(retention_days())
            return
        # The quarry database may not exist yet, so connect to `default` to create it.
        bootstrap = Client.from_url(client_url(self.url, "default"))
        try:
            version = bootstrap.execute("SELECT version()")[0][0]
            apply_schema(bootstrap.execute, DATABASE, is_modern(version), retention_days())
        finally:
            bootstrap.disconnect()

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        # Column by column: the driver's columnar insert is ~1.5x faster than row by row.
        into = f"{DATABASE}.{local_table(table, self.cluster)} ({', '.join(columns)})"
        with self.insert_lock:
            self.insert_client.execute(
                f"INSERT INTO {into} VALUES",
                list(zip(*rows, strict=True)),
                columnar=True,
            )

    def query(self, sql: str) -> QueryResult:
        return self._query(sql, None)

    def read_only_query(self, sql: str) -> QueryResult:
        # A setting of this query only: the connection's next query is not read-only.
        try:
            return self._query(sql, {"readonly": 1})
        except ServerException as exc:
            if exc.code == READONLY_ERROR_CODE:
                raise ReadOnlyRefused(str(exc).split("Stack trace:")[0].strip()) from exc
            raise

    def _query(self, sql: str, settings: dict[str, int] | None) -> QueryResult:
        with self.query_lock:
            rows, column_types = self.query_client.execute(
                sql, with_column_types=True, settings=settings
            )
        return QueryResult(
            columns=[name for name, _ in column_types],
            types=[type_name for _, type_name in column_types],
            rows=[list(row) for row in rows],
        )

    def version(self) -> str:
        with self.query_lock:
            return str(self.query_client.execute("SELECT version()")[0][0])

    def stored_batch_rows(self, table: str, batch_ids: Iterable[str]) -> dict[str, int]:
        if self.on_cluster is not None:
            return self.on_cluster.stored_batch_rows(table, batch_ids)
        rows = self.query(batch_rows_sql(DATABASE, table, batch_ids)).rows
        return {str(batch_id): int(count) for batch_id, count in rows}

    def drop_expired_partitions(self, days: Mapping[str, int]) -> list[tuple[str, str]]:
        if self.on_cluster is not None:
            return self.on_cluster.drop_expired_partitions(days)
        return drop_expired_partitions(self, days)

    def close(self) -> None:
        self.insert_client.disconnect()
        self.query_client.disconnect()
        if self.on_cluster is not None:
            self.on_cluster.hosts.close()
