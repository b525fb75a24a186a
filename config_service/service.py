"""The ConfigService gRPC servicer: versions of the managed state, rollouts and what nodes get.

Every change (a version going live, a rollout starting or ending, label memberships
moving) is pushed to WatchConfig streams, from which the gateways compose and serve
each node group's config from memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc

from config_service import metrics
from config_service.fleet_directory import FleetDirectory, FleetNode
from config_service.node_groups import (
    GLOBAL_FACTS,
    check_groups,
    fleet_groups,
    group_changes,
    node_facts,
)
from config_service.rollout import InvalidCanary, check_canary, rollout_message
from config_service.store import (
    ConfigFetch,
    ConfigStore,
    RolloutInProgress,
    StateVersion,
    sha256_hex,
)
from osquery_config.composition import Composed, compose, config_hash, osquery_info_hash
from osquery_config.rollout import gets_candidate, nodes_for_count
from osquery_config.state import InvalidState, Label, State
from osquery_config.targeting import group_of
from osquery_config.validation import parse_config_json, validate_state
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.change_feed import ChangeFeed
from quarry.change_log import ChangeLog, protobuf_feed

log = logging.getLogger(__name__)

# What a node waiting for approval receives: nothing to run.
PENDING_CONFIG_JSON = "{}"


@dataclass(frozen=True)
class NewVersion:
    """A state about to be stored, and its global rendering (kept beside it)."""

    state_json: str
    author: str
    comment: str
    rendered_json: str


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    def __init__(self, store: ConfigStore, directory: FleetDirectory) -> None:
        self._store = store
        self._directory = directory
        self._feed: ChangeFeed[config_pb2.ConfigEvent] = ChangeFeed()
        # Changes reach the watch streams of every replica through this (ADR 0009).
        self.changes = ChangeLog(
            store.database,
            "config",
            {"config": protobuf_feed(self._relay, config_pb2.ConfigEvent)},
        )
        # Applies, rollbacks and rollout changes one at a time: each checks against the
        # live state it read, and must not interleave with another across an await.
        self._changes = asyncio.Lock()
        self._show_state()

    def close_watches(self) -> None:
        """End the watch streams cleanly; called at shutdown, before the server stops."""
        self._feed.close()

    def defined_labels(self) -> list[Label]:
        """Labels of the live state and of a rollout's candidate: both may target them."""
        labels = {label.name: label for label in self._rollout_labels()}
        labels.update({label.name: label for label in self._store.live().state.labels})
        return list(labels.values())

    def _rollout_labels(self) -> tuple[Label, ...]:
        rollout = self._store.rollout()
        return rollout.candidate.state.labels if rollout else ()

    def _relay(self, event: config_pb2.ConfigEvent) -> None:
        """Every change, from this replica or another, once committed."""
        self._feed.publish(event)
        if event.HasField("live") or event.HasField("rollout"):
            self._show_state()

    def set_label_members(self, label: str, members: set[str]) -> set[str]:
        """Store the label's members and announce the nodes that joined or left."""
        with self.changes.recording() as record:
            changed = self._store.set_label_members(label, members)
            if changed:
                record("config", self._memberships_event(changed))
        return changed

    def forget_labels_except(self, labels: Iterable[str]) -> set[str]:
        """Drop memberships of labels no longer defined and announce the nodes affected."""
        with self.changes.recording() as record:
            left = self._store.forget_labels_except(labels)
            if left:
                record("config", self._memberships_event(left))
        return left

    def _memberships_event(self, node_ids: Iterable[str]) -> config_pb2.ConfigEvent:
        memberships = self._store.memberships()
        return config_pb2.ConfigEvent(memberships=membership_messages(memberships, node_ids))

    # Plain configs (one block for every node)

    async def SetConfig(
        self, request: config_pb2.SetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ConfigDocument:
        try:
            state = State.single_block(parse_config_json(request.config_json))
        except InvalidState as exc:
            await self._refuse(context, request.author, exc)
        async with self._changes:
            response = await self._apply(context, state, request.author, comment="config set")
        return self._document(self._store.version(response.version.version) or self._store.live())

    async def GetConfig(
        self, request: config_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ConfigDocument:
        return self._document(self._store.live())

    def _document(self, version: StateVersion) -> config_pb2.ConfigDocument:
        config_json = global_config(version.state).config_json
        return config_pb2.ConfigDocument(
            version=version.version,
            config_json=config_json,
            author=version.author,
            created_at=version.created_at,
            sha256=sha256_hex(config_json),
        )

    # The managed state

    async def ApplyState(
        self, request: config_pb2.ApplyStateRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ApplyStateResponse:
        try:
            state = State.from_json(request.state_json)
            check_canary(request.canary_percent, request.canary_count)
        except (InvalidState, InvalidCanary) as exc:
            await self._refuse(context, request.author, exc)
        async with self._changes:
            return await self._apply(
                context,
                state,
                request.author,
                request.comment,
                dry_run=request.dry_run,
                canary_percent=request.canary_percent,
                canary_count=request.canary_count,
            )

    async def _apply(
        self,
        context: grpc.aio.ServicerContext,
        state: State,
        author: str,
        comment: str,
        dry_run: bool = False,
        canary_percent: int = 0,
        canary_count: int = 0,
    ) -> config_pb2.ApplyStateResponse:
        """Validate state against every group in the fleet; unless dry_run, store it."""
        rollout = self._store.rollout()
        if rollout is not None and not dry_run:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"a rollout of version {rollout.candidate_version} is in progress;"
                " promote or abort it first",
            )
        nodes, warnings = await self._nodes_for_checks(need_nodes=canary_count > 0)
        if nodes is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, warnings[0])
        memberships = self._store.memberships()
        try:
            warnings += validate_state(state)
            conflicts = check_groups(state, fleet_groups(state, nodes, memberships))
        except InvalidState as exc:
            await self._refuse(context, author, exc)
        live = self._store.live()
        changes = group_changes(live.state, state, nodes, memberships)
        response = config_pb2.ApplyStateResponse(
            diffs=[
                config_pb2.GroupDiff(group=c.group, nodes=c.nodes, diff=c.diff) for c in changes
            ],
            warnings=warnings,
            conflicts=conflicts,
        )
        state_json = state.to_json()
        response.changed = sha256_hex(state_json) != live.sha256
        if dry_run or not response.changed:
            metrics.APPLIES.labels("dry_run" if dry_run else "unchanged").inc()
            response.version.CopyFrom(
                version_message(self._unstored(state_json, author, comment))
                if response.changed
                else version_message(live)
            )
            return response
        new = NewVersion(state_json, author, comment, global_config(state).config_json)
        try:
            if canary_percent or canary_count:
                stored = self._start_rollout(new, nodes, canary_percent, canary_count)
            else:
                stored = self._make_live(new)
        except RolloutInProgress as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        await self.changes.settled()
        response.version.CopyFrom(version_message(stored))
        return response

    def _start_rollout(
        self, new: NewVersion, nodes: list[FleetNode], canary_percent: int, canary_count: int
    ) -> StateVersion:
        with self.changes.recording() as record:
            # Inside the transaction: the version number is final here, even with replicas.
            version = self._store.next_version()
            chosen = nodes_for_count((n.node_id for n in nodes), version, canary_count)
            started = self._store.start_rollout(
                new.state_json,
                new.author,
                new.comment,
                new.rendered_json,
                int(time.time()),
                canary_percent,
                chosen,
            )
            record("config", config_pb2.ConfigEvent(rollout=rollout_message(started)))
        metrics.APPLIES.labels("rollout").inc()
        log.info(
            "rollout of version %d started by %r (%d%%, %d nodes listed)",
            started.candidate_version,
            new.author,
            canary_percent,
            len(chosen),
        )
        return started.candidate

    def _make_live(self, new: NewVersion) -> StateVersion:
        with self.changes.recording() as record:
            stored = self._store.make_live(
                new.state_json, new.author, new.comment, new.rendered_json, int(time.time())
            )
            record("config", config_pb2.ConfigEvent(live=version_message(stored)))
        metrics.APPLIES.labels("live").inc()
        log.info("state version %d made live by %r", stored.version, new.author)
        return stored

    async def _nodes_for_checks(self, need_nodes: bool) -> tuple[list[FleetNode] | None, list[str]]:
        """The active nodes; without the enroll service only the global group is checked
        (a warning says so), unless the nodes themselves are needed (a canary count)."""
        try:
            return await self._directory.active_nodes(), []
        except grpc.aio.AioRpcError as exc:
            problem = f"enroll service at {self._directory.addr} unreachable ({exc.code().name})"
            if need_nodes:
                return None, [f"{problem}: cannot pick canary nodes"]
            log.warning("%s; checking the global group only", problem)
            return [], [f"{problem}: only the global group was checked"]

    def _unstored(self, state_json: str, author: str, comment: str) -> StateVersion:
        """What the next version would be, for a dry run."""
        return StateVersion(
            self._store.next_version(),
            state_json,
            author,
            int(time.time()),
            sha256_hex(state_json),
            comment,
        )

    async def _refuse(
        self, context: grpc.aio.ServicerContext, author: str, problem: Exception
    ) -> None:
        metrics.APPLIES.labels("invalid").inc()
        log.warning("state from %r refused: %s", author, problem)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid state: {problem}")

    async def ExportState(
        self, request: config_pb2.ExportStateRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        if request.version == 0:
            return version_message(self._store.live())
        return version_message(await self._stored_version(context, request.version))

    async def ListVersions(
        self, request: config_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListVersionsResponse:
        return config_pb2.ListVersionsResponse(
            versions=[version_message(v) for v in self._store.versions()]
        )

    async def Rollback(
        self, request: config_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        earlier = await self._stored_version(context, request.version)
        async with self._changes:
            comment = f"rollback to version {earlier.version}"
            response = await self._apply(context, earlier.state, request.author, comment)
        return response.version

    async def _stored_version(
        self, context: grpc.aio.ServicerContext, version: int
    ) -> StateVersion:
        found = self._store.version(version)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no state version {version}")
        return found

    # Staged rollout

    async def PromoteRollout(
        self, request: config_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        async with self._changes:
            with self.changes.recording() as record:
                live = self._store.promote_rollout()
                if live is not None:
                    record(
                        "config",
                        config_pb2.ConfigEvent(
                            live=version_message(live), rollout=config_pb2.Rollout()
                        ),
                    )
            if live is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no rollout in progress")
            await self.changes.settled()
        log.info("rollout of version %d promoted by %r", live.version, request.author)
        return version_message(live)

    async def AbortRollout(
        self, request: config_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        async with self._changes:
            rollout = self._store.rollout()
            with self.changes.recording() as record:
                aborted = rollout is not None and self._store.abort_rollout()
                if aborted:
                    record("config", config_pb2.ConfigEvent(rollout=config_pb2.Rollout()))
            if not aborted:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no rollout in progress")
            await self.changes.settled()
        log.info("rollout of version %d aborted by %r", rollout.candidate_version, request.author)
        return version_message(self._store.live())

    async def RolloutStatus(
        self, request: config_pb2.RolloutStatusRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.RolloutStatusResponse:
        rollout = self._store.rollout()
        response = config_pb2.RolloutStatusResponse(
            rollout=rollout_message(rollout),
            live_version=self._store.live().version,
            running=[
                config_pb2.VersionCount(version=version, sha1=sha1, nodes=nodes)
                for version, sha1, nodes in self._store.fetch_counts()
            ],
        )
        if rollout is None:
            return response
        if rollout.percent:
            nodes = await self._directory.active_nodes()
            candidates = [n.node_id for n in nodes if gets_candidate(n.node_id, rollout)]
        else:
            candidates = list(rollout.node_ids)
        fetches = self._store.fetches_of(candidates)
        response.candidate_nodes.extend(
            fetch_message(fetches.get(node_id, ConfigFetch(node_id, "", 0, 0)))
            for node_id in sorted(candidates)
        )
        return response

    # Nodes

    async def NodeConfig(
        self, request: config_pb2.NodeConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.NodeConfigResponse:
        node = await self._directory.node(request.node_id)
        if node is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node {request.node_id!r}")
        live = self._store.live()
        if node.pending:
            return config_pb2.NodeConfigResponse(
                config_json=PENDING_CONFIG_JSON,
                sha1=config_hash(PENDING_CONFIG_JSON),
                version=live.version,
                pending=True,
                tags=sorted(node.tags),
            )
        rollout = self._store.rollout()
        chosen = live
        if rollout is not None and gets_candidate(node.node_id, rollout):
            chosen = rollout.candidate
        state = chosen.state
        facts = node_facts(state, node, self._store.memberships())
        group = group_of(state, facts)
        composed = compose(state, group)
        return config_pb2.NodeConfigResponse(
            config_json=composed.config_json,
            sha1=composed.sha1,
            osquery_info_config_hash=osquery_info_hash(composed.sha1),
            version=chosen.version,
            candidate=chosen is not live,
            group=group.describe(),
            blocks=composed.blocks,
            labels=sorted(facts.labels),
            tags=sorted(facts.tags),
            conflicts=composed.conflicts,
        )

    async def RecordConfigFetches(
        self, request: config_pb2.ConfigFetchBatch, context: grpc.aio.ServicerContext
    ) -> config_pb2.RecordConfigFetchesResponse:
        recorded = self._store.record_fetches(
            ConfigFetch(f.node_id, f.sha1, f.version, f.fetched_at) for f in request.fetches
        )
        metrics.FETCHES_RECORDED.inc(recorded)
        return config_pb2.RecordConfigFetchesResponse(recorded=recorded)

    # Watching

    async def WatchConfig(
        self, request: config_pb2.WatchConfigRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.ConfigEvent]:
        metrics.WATCH_STREAMS.inc()
        try:
            # Subscribe before reading the snapshot: no change can slip in between.
            with self._feed.subscribe() as changes:
                yield self._snapshot()
                async for event in changes:
                    yield event
        finally:
            metrics.WATCH_STREAMS.dec()

    def _snapshot(self) -> config_pb2.ConfigEvent:
        memberships = self._store.memberships()
        return config_pb2.ConfigEvent(
            live=version_message(self._store.live()),
            rollout=rollout_message(self._store.rollout()),
            memberships=membership_messages(memberships, memberships),
            snapshot=True,
        )

    def _show_state(self) -> None:
        live = self._store.live()
        rollout = self._store.rollout()
        metrics.LIVE_VERSION.set(live.version)
        metrics.LIVE_SIZE.set(len(global_config(live.state).config_json.encode()))
        metrics.VERSIONS_STORED.set(self._store.count_versions())
        metrics.ROLLOUT_IN_PROGRESS.set(1 if rollout else 0)
        metrics.ROLLOUT_CANDIDATE.set(rollout.candidate_version if rollout else 0)


def global_config(state: State) -> Composed:
    """The state rendered for a node only global targets match (what GetConfig shows)."""
    return compose(state, group_of(state, GLOBAL_FACTS))


def version_message(version: StateVersion) -> config_pb2.StateVersion:
    return config_pb2.StateVersion(
        version=version.version,
        state_json=version.state_json,
        author=version.author,
        created_at=version.created_at,
        sha256=version.sha256,
        comment=version.comment,
    )


def fetch_message(fetch: ConfigFetch) -> config_pb2.ConfigFetch:
    return config_pb2.ConfigFetch(
        node_id=fetch.node_id, sha1=fetch.sha1, version=fetch.version, fetched_at=fetch.fetched_at
    )


def membership_messages(
    memberships: dict[str, frozenset[str]], node_ids: Iterable[str]
) -> list[config_pb2.LabelMembership]:
    """Each node's full label list (empty: a member of none now)."""
    return [
        config_pb2.LabelMembership(node_id=node_id, labels=sorted(memberships.get(node_id, ())))
        for node_id in sorted(set(node_ids))
    ]
