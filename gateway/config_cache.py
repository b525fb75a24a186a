"""Each node's osquery config, served from memory.

Fed by ConfigService.WatchConfig: the live managed state, the staged rollout (its
candidate state) and the nodes' dynamic label memberships. A node's config depends
only on its node group (osquery_config.group_of: platform family, the tags and labels
some block targets, and the node id only when a block names it), so it is composed
once per (state version, group) and every node of the group gets the same bytes.
The node -> config answer is cached too, so serving /config is a dict lookup.

Any change of state or rollout drops everything composed; a membership change drops
only the answers of the nodes whose labels changed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway import metrics
from gateway.config_fetches import ConfigFetchRecorder
from gateway.node_cache import NodeIdentity
from osquery_config.composition import compose
from osquery_config.rollout import gets_candidate
from osquery_config.state import DEFAULT_STATE, State
from osquery_config.targeting import NodeFacts, NodeGroup, group_of, node_tags_for
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.serving.grpc_runtime import run_forever_with_reconnect

log = logging.getLogger(__name__)

NO_LABELS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class VersionedState:
    version: int
    state: State


@dataclass(frozen=True, slots=True)
class ServedConfig:
    """The exact bytes a node gets, and what identifies them in fetch records."""

    body: bytes
    sha1: str
    version: int


class ConfigCache:
    def __init__(
        self, stub: config_pb2_grpc.ConfigServiceStub, fetch_flush_interval_s: float
    ) -> None:
        self._stub = stub
        self.fetches = ConfigFetchRecorder(stub, fetch_flush_interval_s)
        self.live: VersionedState | None = None
        self.candidate: VersionedState | None = None
        self.rollout = config_pb2.Rollout()
        self._labels: dict[str, frozenset[str]] = {}
        self._by_group: dict[tuple[int, NodeGroup], ServedConfig] = {}
        # node id -> (the identity it was computed for, its config)
        self._by_node: dict[str, tuple[NodeIdentity, ServedConfig]] = {}
        self.synced = asyncio.Event()

    @property
    def version(self) -> int:
        """The live version, -1 before the first snapshot."""
        return self.live.version if self.live else -1

    def labels_of(self, node_id: str) -> frozenset[str]:
        return self._labels.get(node_id, NO_LABELS)

    def tags_of(self, node: NodeIdentity) -> frozenset[str]:
        """Every tag of the node for live queries: its secret's and the live config's
        node_tags (a rollout's candidate gives its node_tags to configs only)."""
        tags = frozenset(node.tags)
        if self.live is None or not self.live.state.node_tags:
            return tags
        return tags | node_tags_for(self.live.state, node.node_id, node.host_identifier)

    # --- serving ----------------------------------------------------------------------

    def config_for(self, node: NodeIdentity) -> ServedConfig | None:
        """The config this node gets now; None until the first snapshot arrived."""
        cached = self._by_node.get(node.node_id)
        if cached is not None and cached[0] == node:
            return cached[1]
        if self.live is None:
            return None
        served = self._compose_for(node)
        self._by_node[node.node_id] = (node, served)
        return served

    def _compose_for(self, node: NodeIdentity) -> ServedConfig:
        chosen = self._state_for(node.node_id)
        facts = NodeFacts(
            node_id=node.node_id,
            platform=node.platform,
            tags=frozenset(node.tags)
            | node_tags_for(chosen.state, node.node_id, node.host_identifier),
            labels=self.labels_of(node.node_id),
        )
        key = (chosen.version, group_of(chosen.state, facts))
        served = self._by_group.get(key)
        if served is None:
            composed = compose(chosen.state, key[1])
            served = ServedConfig(composed.config_json.encode(), composed.sha1, chosen.version)
            self._by_group[key] = served
            metrics.CONFIG_COMPOSITIONS.inc()
            metrics.CONFIG_GROUPS_CACHED.set(len(self._by_group))
        return served

    def _state_for(self, node_id: str) -> VersionedState:
        assert self.live is not None
        if self.candidate is not None and gets_candidate(node_id, self.rollout):
            return self.candidate
        return self.live

    # --- the watch stream -------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(
            run_forever_with_reconnect("config", self._watch_once), self.fetches.run()
        )

    async def _watch_once(self) -> None:
        async for event in self._stub.WatchConfig(config_pb2.WatchConfigRequest()):
            self.apply(event)
            metrics.WATCH_SYNCED.labels("config").set(1)
            self.synced.set()
        metrics.WATCH_SYNCED.labels("config").set(0)

    def apply(self, event: config_pb2.ConfigEvent) -> None:
        """One event: new live state, new rollout and/or changed label memberships."""
        if event.snapshot:
            self._labels = {}
            self._forget_everything()
        if event.HasField("live"):
            self.live = VersionedState(event.live.version, _parse_state(event.live.state_json))
            self._forget_everything()
            log.info("config version %d now served", event.live.version)
        if event.HasField("rollout"):
            self._start_rollout(event.rollout)
        for membership in event.memberships:
            self._set_labels(membership.node_id, frozenset(membership.labels))

    def _start_rollout(self, rollout: config_pb2.Rollout) -> None:
        self.rollout = rollout
        self.candidate = None
        if rollout.candidate_version:
            state = _parse_state(rollout.candidate_state_json)
            self.candidate = VersionedState(rollout.candidate_version, state)
            log.info(
                "config version %d rolling out to %d%% and %d named nodes",
                rollout.candidate_version,
                rollout.percent,
                len(rollout.node_ids),
            )
        self._forget_everything()

    def _set_labels(self, node_id: str, labels: frozenset[str]) -> None:
        if labels:
            self._labels[node_id] = labels
        else:
            self._labels.pop(node_id, None)
        # Only this node's group can change; the groups' configs stay valid.
        self._by_node.pop(node_id, None)

    def _forget_everything(self) -> None:
        self._by_group.clear()
        self._by_node.clear()
        metrics.CONFIG_GROUPS_CACHED.set(0)


def _parse_state(state_json: str) -> State:
    """A state from the service; empty means nothing was ever applied (the default)."""
    return State.from_json(state_json) if state_json else DEFAULT_STATE
