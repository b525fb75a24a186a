"""What each node gets: one node's config (as the gateway would compose it) and which
nodes run which version during a rollout (docs/config.md)."""

from __future__ import annotations

import grpc

from config_service.fleet_directory import FleetDirectory
from config_service.messages import fetch_message
from config_service.node_groups import node_facts
from config_service.rollout import rollout_message
from config_service.store import ConfigFetch, ConfigStore
from osquery_config.composition import compose, config_hash, osquery_info_hash
from osquery_config.rollout import gets_candidate
from osquery_config.targeting import group_of, node_tags_for
from protos.v1 import config_pb2
from quarry.access.admin_auth import Refused

# What a node waiting for approval receives: nothing to run.
PENDING_CONFIG_JSON = "{}"


class NodeConfigs:
    def __init__(self, store: ConfigStore, directory: FleetDirectory) -> None:
        self._store = store
        self._directory = directory

    async def node_config(self, node_id: str) -> config_pb2.NodeConfigResponse:
        node = await self._directory.node(node_id)
        if node is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no node {node_id!r}")
        live = self._store.live()
        if node.pending:
            return config_pb2.NodeConfigResponse(
                config_json=PENDING_CONFIG_JSON,
                sha1=config_hash(PENDING_CONFIG_JSON),
                version=live.version,
                pending=True,
                tags=sorted(
                    node.tags | node_tags_for(live.state, node.node_id, node.host_identifier)
                ),
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

    async def rollout_status(self) -> config_pb2.RolloutStatusResponse:
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
