"""Changes of the managed state: apply (checked against every node group, dry run or
staged rollout), rollback, and a rollout's promotion or abort (docs/config.md).

They run one at a time: each checks against the live state it read, and must not
interleave with another across an await. Each is announced on the config feed in the
transaction that makes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from config_service import metrics
from config_service.config_feed import FEED
from config_service.fleet_directory import FleetDirectory, FleetNode
from config_service.messages import global_config, version_message
from config_service.node_groups import (
    check_groups,
    fleet_groups,
    group_changes,
    unknown_node_tags,
)
from config_service.rollout import InvalidCanary, check_canary, rollout_message
from config_service.store import ConfigStore, RolloutInProgress, StateVersion, sha256_hex
from osquery_config.diff import DETECTIONS_GROUP, diff_detections
from osquery_config.rollout import nodes_for_count
from osquery_config.state import InvalidState, State
from osquery_config.validation import parse_config_json, validate_state
from protos.v1 import config_pb2
from quarry.access.admin_auth import Refused
from quarry.state.change_log import ChangeLog

log = logging.getLogger(__name__)

NO_ROLLOUT = "no rollout in progress"


@dataclass(frozen=True)
class NewVersion:
    """A state about to be stored, and its global rendering (kept beside it)."""

    state_json: str
    author: str
    comment: str
    rendered_json: str


@dataclass(frozen=True)
class Canary:
    """A staged rollout's size: a percentage of the fleet or a count of nodes (or none)."""

    percent: int = 0
    count: int = 0


class StateChanges:
    def __init__(self, store: ConfigStore, directory: FleetDirectory, changes: ChangeLog) -> None:
        self._store = store
        self._directory = directory
        self._changes = changes
        self._lock = asyncio.Lock()

    async def set_config(self, config_json: str, author: str) -> StateVersion:
        """One plain config for every node, made live; the version now live."""
        try:
            state = State.single_block(parse_config_json(config_json))
        except InvalidState as exc:
            raise _invalid(author, exc) from exc
        async with self._lock:
            response = await self._apply(state, author, comment="config set")
        return self._store.version(response.version.version) or self._store.live()

    async def apply(
        self, state_json: str, author: str, comment: str, dry_run: bool, canary: Canary
    ) -> config_pb2.ApplyStateResponse:
        try:
            state = State.from_json(state_json)
            check_canary(canary.percent, canary.count)
        except (InvalidState, InvalidCanary) as exc:
            raise _invalid(author, exc) from exc
        async with self._lock:
            return await self._apply(state, author, comment, dry_run, canary)

    async def rollback(self, version: int, author: str) -> config_pb2.StateVersion:
        earlier = self.stored_version(version)
        async with self._lock:
            comment = f"rollback to version {earlier.version}"
            response = await self._apply(earlier.state, author, comment)
        return response.version

    def stored_version(self, version: int) -> StateVersion:
        found = self._store.version(version)
        if found is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no state version {version}")
        return found

    async def _apply(
        self,
        state: State,
        author: str,
        comment: str,
        dry_run: bool = False,
        canary: Canary = Canary(),
    ) -> config_pb2.ApplyStateResponse:
        """Validate state against every group in the fleet; unless dry_run, store it."""
        rollout = self._store.rollout()
        if rollout is not None and not dry_run:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"a rollout of version {rollout.candidate_version} is in progress;"
                " promote or abort it first",
            )
        nodes, warnings = await self._nodes_for_checks(need_nodes=canary.count > 0)
        if nodes is None:
            raise Refused(grpc.StatusCode.UNAVAILABLE, warnings[0])
        fleet_known = not warnings  # the enroll service answered: its nodes are the fleet
        memberships = self._store.memberships()
        try:
            warnings += validate_state(state)
            if fleet_known:
                warnings += unknown_node_tags(state, nodes)
            conflicts = check_groups(state, fleet_groups(state, nodes, memberships))
        except InvalidState as exc:
            raise _invalid(author, exc) from exc
        live = self._store.live()
        changes = group_changes(live.state, state, nodes, memberships)
        response = config_pb2.ApplyStateResponse(
            diffs=[
                config_pb2.GroupDiff(group=c.group, nodes=c.nodes, diff=c.diff) for c in changes
            ],
            warnings=warnings,
            conflicts=conflicts,
        )
        rules_diff = diff_detections(live.state, state)
        if rules_diff:
            response.diffs.append(config_pb2.GroupDiff(group=DETECTIONS_GROUP, diff=rules_diff))
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
            if canary.percent or canary.count:
                stored = self._start_rollout(new, nodes, canary)
            else:
                stored = self._make_live(new)
        except RolloutInProgress as exc:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        await self._changes.settled()
        response.version.CopyFrom(version_message(stored))
        return response

    def _start_rollout(
        self, new: NewVersion, nodes: list[FleetNode], canary: Canary
    ) -> StateVersion:
        with self._changes.recording() as record:
            # Inside the transaction: the version number is final here, even with replicas.
            version = self._store.next_version()
            chosen = nodes_for_count((n.node_id for n in nodes), version, canary.count)
            started = self._store.start_rollout(
                new.state_json,
                new.author,
                new.comment,
                new.rendered_json,
                int(time.time()),
                canary.percent,
                chosen,
            )
            record(FEED, config_pb2.ConfigEvent(rollout=rollout_message(started)))
        metrics.APPLIES.labels("rollout").inc()
        log.info(
            "rollout of version %d started by %r (%d%%, %d nodes listed)",
            started.candidate_version,
            new.author,
            canary.percent,
            len(chosen),
        )
        return started.candidate

    def _make_live(self, new: NewVersion) -> StateVersion:
        with self._changes.recording() as record:
            stored = self._store.make_live(
                new.state_json, new.author, new.comment, new.rendered_json, int(time.time())
            )
            record(FEED, config_pb2.ConfigEvent(live=version_message(stored)))
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

    # Staged rollout

    async def promote_rollout(self, author: str) -> StateVersion:
        async with self._lock:
            with self._changes.recording() as record:
                live = self._store.promote_rollout()
                if live is not None:
                    record(
                        FEED,
                        config_pb2.ConfigEvent(
                            live=version_message(live), rollout=config_pb2.Rollout()
                        ),
                    )
            if live is None:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, NO_ROLLOUT)
            await self._changes.settled()
        log.info("rollout of version %d promoted by %r", live.version, author)
        return live

    async def abort_rollout(self, author: str) -> StateVersion:
        """Drop the rollout; the version live (unchanged)."""
        async with self._lock:
            rollout = self._store.rollout()
            with self._changes.recording() as record:
                aborted = rollout is not None and self._store.abort_rollout()
                if aborted:
                    record(FEED, config_pb2.ConfigEvent(rollout=config_pb2.Rollout()))
            if not aborted:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, NO_ROLLOUT)
            await self._changes.settled()
        log.info("rollout of version %d aborted by %r", rollout.candidate_version, author)
        return self._store.live()


def _invalid(author: str, problem: Exception) -> Refused:
    """The refusal of an invalid state, counted and logged."""
    metrics.APPLIES.labels("invalid").inc()
    # Every problem found, on one line (a status message is one line for the CLI).
    problems = getattr(problem, "problems", None) or (str(problem),)
    message = "; ".join(problems)
    log.warning("state from %r refused: %s", author, message)
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"invalid state: {message}")
