"""A real ClickHouse cluster for tests: a private ZooKeeper and several ClickHouse 18.16 servers.

`clickhouse_cluster(root, shards, replicas)` starts ZooKeeper (Debian's `zookeeper`
package, .ci/zookeeper.sh) and shards x replicas servers (.ci/clickhouse.sh), each with a
config.d file naming the cluster (remote_servers), ZooKeeper and its own macros: the server
config docs/deploy.md asks for. Everything runs on free loopback ports under `root` and is
stopped afterwards. Without Java or ZooKeeper it skips (on CI, CI=true, it fails instead).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from clickhouse_driver import Client

from tests.free_ports import free_port_base

REPO_ROOT = Path(__file__).resolve().parent.parent
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
SERVER_BINARY = Path("/usr/sbin/clickhouse-server")
CLUSTER_NAME = "quarry_test"
# The scripts wait for their server themselves (ZooKeeper ~1 s, ClickHouse ~0.2 s, 20 s max).
SCRIPT_TIMEOUT_S = 120

REPLICA_XML = """    <replica><host>127.0.0.1</host><port>{port}</port></replica>"""
SHARD_XML = """  <shard>
    <internal_replication>true</internal_replication>
{replicas}
  </shard>"""
CONFIG_D_XML = """<yandex>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <zookeeper><node><host>127.0.0.1</host><port>{zookeeper_port}</port></node></zookeeper>
  <macros><shard>{shard:02d}</shard><replica>replica-{replica}</replica></macros>
  <remote_servers><{cluster}>
{shards}
  </{cluster}></remote_servers>
</yandex>
"""


@dataclass
class ClickHouseHost:
    """One server of the cluster; stop() and start() it to play a host failure."""

    root: Path
    shard: int
    replica: int
    tcp_port: int
    http_port: int
    running: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    def start(self) -> None:
        if not self.running:
            run_script("clickhouse.sh", "start", self.root, self.tcp_port, self.http_port)
            self.running = True

    def stop(self) -> None:
        run_script("clickhouse.sh", "stop", self.root)
        self.running = False

    def client(self, database: str = "default") -> Client:
        return Client("127.0.0.1", port=self.tcp_port, database=database, connect_timeout=5)

    def rows(self, sql: str) -> list[tuple]:
        client = self.client()
        try:
            return client.execute(sql)
        finally:
            client.disconnect()


@dataclass
class ClickHouseCluster:
    name: str
    hosts: list[ClickHouseHost]

    def url(self, database: str = "quarry") -> str:
        """A Quarry URL listing every host, as QUARRY_CLICKHOUSE_URL takes it."""
        listed = ",".join(host.address for host in self.hosts)
        return f"clickhouse://default:@{listed}/{database}"


def run_script(script: str, *args: object) -> None:
    subprocess.run(
        ["bash", str(REPO_ROOT / ".ci" / script), *map(str, args)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=SCRIPT_TIMEOUT_S,
    )


def skip_without_zookeeper() -> None:
    missing = [str(path) for path in (ZOOKEEPER_JAR, SERVER_BINARY) if not path.exists()]
    if not shutil.which("java"):
        missing.append("java")
    if missing:
        reason = f"no ClickHouse cluster: missing {', '.join(missing)} (apt-get install zookeeper)"
        if os.environ.get("CI") == "true":
            raise RuntimeError(reason)
        pytest.skip(reason)


@contextmanager
def clickhouse_cluster(
    root: Path, shards: int = 1, replicas: int = 2
) -> Iterator[ClickHouseCluster]:
    """ZooKeeper plus shards x replicas ClickHouse servers, stopped on exit."""
    skip_without_zookeeper()
    base = free_port_base()
    zookeeper_dir = root / "zookeeper"
    run_script("zookeeper.sh", "start", zookeeper_dir, base)
    hosts = [
        # Each server takes tcp, http and http + 1 (interserver) ports.
        ClickHouseHost(root / f"clickhouse-{shard}-{replica}", shard, replica, port, port + 1)
        for shard in range(1, shards + 1)
        for replica in range(1, replicas + 1)
        for port in [base + 3 * ((shard - 1) * replicas + replica)]
    ]
    try:
        for host in hosts:
            write_config_d(host, hosts, base)
            host.start()
        yield ClickHouseCluster(CLUSTER_NAME, hosts)
    finally:
        for host in hosts:
            host.stop()
        run_script("zookeeper.sh", "stop", zookeeper_dir)


def write_config_d(host: ClickHouseHost, hosts: list[ClickHouseHost], zookeeper_port: int) -> None:
    shards = sorted({other.shard for other in hosts})
    shards_xml = "\n".join(
        SHARD_XML.format(
            replicas="\n".join(
                REPLICA_XML.format(port=other.tcp_port) for other in hosts if other.shard == shard
            )
        )
        for shard in shards
    )
    config_d = host.root / "config.d"
    config_d.mkdir(parents=True, exist_ok=True)
    (config_d / "cluster.xml").write_text(
        CONFIG_D_XML.format(
            zookeeper_port=zookeeper_port,
            shard=host.shard,
            replica=host.replica,
            cluster=CLUSTER_NAME,
            shards=shards_xml,
        )
    )
