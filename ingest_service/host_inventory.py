"""quarry.hosts kept current: the enroll and config services' change feeds, folded into one
row per node, written when that row changes (docs/adr/0020-hosts-table.md).

Ingest writes it because only the ingest process may open chdb, and it is already the
one writer of ClickHouse. It holds two streams, as a gateway does: EnrollService.WatchNodes
(each node, its approval and revocation, and every minute the last-seen times that moved)
and ConfigService.WatchConfig (label memberships, and the live config's node_tags, which
add to the enroll secret's tags: ADR 0013). Each stream opens with a snapshot, so after a
restart or a reconnect the table converges: a node the snapshot no longer lists is written
as revoked.

What was last written for each node is held (read back from `hosts_current` at start), so
a row is inserted only when its content changes. Every row gets a higher `version` than
the node's previous one; ReplacingMergeTree keeps the highest, and readers take it with
FINAL or the `hosts_current` view, so replicas of ingest writing the same rows show each
node once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ingest_service import metrics
from ingest_service.log_store import DATABASE, LogStore
from ingest_service.schema import HOSTS
from osquery_config.state import InvalidState, State
from osquery_config.targeting import node_tags_for
from protos.v1 import config_pb2, config_pb2_grpc, enroll_pb2, enroll_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import aio_channel, run_forever_with_reconnect

log = logging.getLogger(__name__)

Event = enroll_pb2.NodeEvent
COLUMNS = tuple(column.name for column in HOSTS.columns)
ENROLLED, PENDING, REVOKED = "enrolled", "pending", "revoked"
# How often changed rows are written: "within seconds" of a change, one insert for all.
FLUSH_INTERVAL_S = 1.0
# Without the config service, rows go out after this long with the labels held so far,
# rather than waiting for it (and being written again when it answers).
CONFIG_GRACE_S = 10.0


@dataclass(frozen=True)
class HostRow:
    """One node's row, without updated_at and version (what decides whether to write)."""

    node_id: str
    host_identifier: str = ""
    hostname: str = ""
    platform: str = ""
    os_version: str = ""
    osquery_version: str = ""
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    secret_name: str = ""
    status: str = ENROLLED
    enrolled_at: int = 0
    last_seen: int = 0

    def values(self, updated_at: int, version: int) -> tuple[Any, ...]:
        return (
            self.node_id,
            self.host_identifier,
            self.hostname,
            self.platform,
            self.os_version,
            self.osquery_version,
            list(self.tags),
            list(self.labels),
            self.secret_name,
            self.status,
            self.enrolled_at,
            self.last_seen,
            updated_at,
            version,
        )


@dataclass
class HostDirectory:
    """What the feeds say of every node, and what quarry.hosts holds; no I/O."""

    nodes: dict[str, enroll_pb2.Node] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    node_tags: State = field(default_factory=State)
    # What the table holds for each node (its latest row), and that row's version.
    written: dict[str, HostRow] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    nodes_synced: bool = False
    config_synced: bool = False

    # From the tables

    def load(self, rows: Iterable[tuple[HostRow, int]]) -> None:
        """What quarry.hosts holds; the rows of the snapshots are compared with it."""
        for row, version in rows:
            self.written[row.node_id] = row
            self.versions[row.node_id] = version
            self.dirty.add(row.node_id)

    # From WatchNodes

    def replace_nodes(self, snapshot: Sequence[enroll_pb2.Node]) -> None:
        """A stream's snapshot: every valid node. Any other node is not (or no longer) valid."""
        valid = {node.node_id: node for node in snapshot}
        for node_id in set(self.nodes) | set(self.written):
            if node_id not in valid:
                self.statuses[node_id] = REVOKED
                self.dirty.add(node_id)
        for node in snapshot:
            self.upsert(node)
        self.nodes_synced = True

    def upsert(self, node: enroll_pb2.Node) -> None:
        self.nodes[node.node_id] = node
        self.statuses[node.node_id] = PENDING if node.pending else ENROLLED
        self.last_seen[node.node_id] = max(self.last_seen.get(node.node_id, 0), node.last_seen_at)
        self.dirty.add(node.node_id)

    def remove(self, node: enroll_pb2.Node) -> None:
        """A key no longer valid: the node is revoked, unless the key was replaced (a
        re-enrollment sends REMOVE of the old key, then UPSERT of the new one)."""
        held = self.nodes.get(node.node_id)
        if held is not None and held.node_key != node.node_key:
            return
        if held is None:
            self.nodes[node.node_id] = node
        self.statuses[node.node_id] = REVOKED
        self.dirty.add(node.node_id)

    def seen(self, checkins: Iterable[enroll_pb2.Checkin]) -> None:
        for checkin in checkins:
            if checkin.node_id in self.nodes and checkin.seen_at > self.last_seen.get(
                checkin.node_id, 0
            ):
                self.last_seen[checkin.node_id] = checkin.seen_at
                self.dirty.add(checkin.node_id)

    def apply_node_event(self, event: enroll_pb2.NodeEvent) -> None:
        """One live change (a GROUP: its changes, in order)."""
        if event.kind == Event.UPSERT:
            self.upsert(event.node)
        elif event.kind == Event.REMOVE:
            self.remove(event.node)
        elif event.kind == Event.SEEN:
            self.seen(event.seen)
        elif event.kind == Event.GROUP:
            for change in event.group:
                self.apply_node_event(change)

    # From WatchConfig

    def apply_config_event(self, event: config_pb2.ConfigEvent) -> None:
        if event.snapshot:
            self.dirty.update(self.labels)
            self.labels = {}
            self.config_synced = True
        for membership in event.memberships:
            self.labels[membership.node_id] = tuple(sorted(membership.labels))
            self.dirty.add(membership.node_id)
        if event.HasField("live"):
            self._take_node_tags(event.live)

    def _take_node_tags(self, live: config_pb2.StateVersion) -> None:
        try:
            state = State.from_json(live.state_json)
        except InvalidState as exc:  # stored states were valid: a newer format, say
            log.warning("live config version %d not read for node_tags: %s", live.version, exc)
            return
        if state.node_tags != self.node_tags.node_tags:
            # Only node_tags matter here: keep a small state, not the whole config.
            self.node_tags = State(node_tags=state.node_tags)
            self.dirty.update(self.nodes)

    # To the table

    def row(self, node_id: str) -> HostRow | None:
        """The node's row as the feeds describe it; None for a node they never named."""
        node = self.nodes.get(node_id)
        if node is None:
            written = self.written.get(node_id)
            return replace(written, status=REVOKED) if written else None
        secret_tags = node.secret_tags or node.tags
        tags = set(secret_tags) | node_tags_for(self.node_tags, node_id, node.host_identifier)
        return HostRow(
            node_id=node_id,
            host_identifier=node.host_identifier,
            hostname=node.hostname,
            platform=node.platform,
            os_version=node.os_version,
            osquery_version=node.osquery_version,
            tags=tuple(sorted(tags)),
            labels=self.labels.get(node_id, ()),
            secret_name=node.secret_name,
            status=self.statuses.get(node_id, ENROLLED),
            enrolled_at=node.enrolled_at,
            last_seen=self.last_seen.get(node_id, 0),
        )

    def changed_rows(self) -> list[HostRow]:
        """The rows that differ from what the table holds; clears the dirty set."""
        dirty, self.dirty = self.dirty, set()
        rows = []
        for node_id in sorted(dirty):
            row = self.row(node_id)
            if row is not None and row != self.written.get(node_id):
                rows.append(row)
        return rows

    def versioned(self, rows: Sequence[HostRow], now_ms: int) -> list[tuple[Any, ...]]:
        """Each row with updated_at and a version above the node's previous one (a clock
        that stepped back, or another replica's row written a moment later)."""
        values = []
        for row in rows:
            version = max(now_ms, self.versions.get(row.node_id, 0) + 1)
            values.append(row.values(now_ms // 1000, version))
        return values

    def wrote(self, rows: Sequence[HostRow], values: Sequence[tuple[Any, ...]]) -> None:
        for row, row_values in zip(rows, values, strict=True):
            self.written[row.node_id] = row
            self.versions[row.node_id] = row_values[-1]

    def failed(self, rows: Sequence[HostRow]) -> None:
        """Not stored: try these again at the next flush."""
        self.dirty.update(row.node_id for row in rows)


# Reading what the table holds

LOAD_SQL = (
    "SELECT node_id, host_identifier, hostname, platform, os_version, osquery_version, tags,"
    " labels, secret_name, status, toUInt32(enrolled_at), toUInt32(last_seen), version"
    f" FROM {DATABASE}.hosts_current"
)


def written_rows(result_rows: Iterable[Sequence[Any]]) -> list[tuple[HostRow, int]]:
    rows = []
    for values in result_rows:
        row = HostRow(
            *(str(value) for value in values[:6]),
            tags=tuple(values[6]),
            labels=tuple(values[7]),
            secret_name=str(values[8]),
            status=str(values[9]),
            enrolled_at=int(values[10]),
            last_seen=int(values[11]),
        )
        rows.append((row, int(values[12])))
    return rows


class HostInventory:
    """The two streams and the writer: run() until cancelled."""

    def __init__(self, settings: Settings, store: LogStore) -> None:
        self.store = store
        self.directory = HostDirectory()
        self.enroll_channel = aio_channel(settings.service_addr("enroll"))
        self.config_channel = aio_channel(settings.service_addr("config"))
        self.loaded = False
        self.started = time.monotonic()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(run_forever_with_reconnect("hosts: nodes", self._watch_nodes)),
            asyncio.create_task(run_forever_with_reconnect("hosts: config", self._watch_config)),
        ]
        try:
            await self._write_forever()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.enroll_channel.close()
        await self.config_channel.close()

    async def _watch_nodes(self) -> None:
        # The enroll service may start after ingest: wait for it quietly.
        await self.enroll_channel.channel_ready()
        stub = enroll_pb2_grpc.EnrollServiceStub(self.enroll_channel)
        snapshot: list[enroll_pb2.Node] | None = []
        async for event in stub.WatchNodes(enroll_pb2.WatchNodesRequest()):
            if snapshot is None:
                self.directory.apply_node_event(event)
            elif event.kind == Event.SNAPSHOT_DONE:
                self.directory.replace_nodes(snapshot)
                log.info("hosts: %d valid nodes in the enroll service's snapshot", len(snapshot))
                snapshot = None
            elif event.kind == Event.UPSERT:
                snapshot.append(event.node)

    async def _watch_config(self) -> None:
        await self.config_channel.channel_ready()
        stub = config_pb2_grpc.ConfigServiceStub(self.config_channel)
        async for event in stub.WatchConfig(config_pb2.WatchConfigRequest()):
            self.directory.apply_config_event(event)

    async def _write_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:
                metrics.INSERT_ERRORS.labels(HOSTS.name).inc()
                if not failing:  # one line when writes start failing, one when they work
                    log.warning("hosts: cannot write quarry.hosts now (will retry): %s", exc)
                failing = True
                continue
            if failing:
                log.info("hosts: writing quarry.hosts again")
            failing = False

    def ready(self) -> bool:
        """Rows go out once the node snapshot is in, and the config's or its grace is over."""
        directory = self.directory
        waited = time.monotonic() - self.started >= CONFIG_GRACE_S
        return directory.nodes_synced and (directory.config_synced or waited)

    async def flush(self) -> int:
        """Write the rows that changed; returns how many."""
        if not self.loaded:
            result = await asyncio.to_thread(self.store.query, LOAD_SQL)
            self.directory.load(written_rows(result.rows))
            self.loaded = True
            log.info("hosts: quarry.hosts holds %d nodes", len(result.rows))
        if not self.ready():
            return 0
        rows = self.directory.changed_rows()
        if not rows:
            return 0
        values = self.directory.versioned(rows, int(time.time() * 1000))
        try:
            with metrics.INSERT_SECONDS.labels(HOSTS.name).time():
                await asyncio.to_thread(self.store.insert_rows, HOSTS.name, COLUMNS, values)
        except Exception:
            self.directory.failed(rows)
            raise
        self.directory.wrote(rows, values)
        metrics.ROWS_INSERTED.labels(HOSTS.name).inc(len(rows))
        return len(rows)
