"""The ConfigService gRPC servicer: translates messages and calls the rules.

Changes of the managed state are in state_changes.py, what each node gets in
node_configs.py, the change feed the gateways watch (and label memberships) in
config_feed.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc

from config_service import metrics
from config_service.config_feed import ConfigFeed
from config_service.fleet_directory import FleetDirectory
from config_service.messages import document_message, version_message
from config_service.node_configs import NodeConfigs
from config_service.state_changes import Canary, StateChanges
from config_service.store import ConfigFetch, ConfigStore
from osquery_config.state import Label
from protos.v1 import config_pb2, config_pb2_grpc
from quarry.access.admin_auth import Refused
from quarry.state.change_log import ChangeLog


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    def __init__(self, store: ConfigStore, directory: FleetDirectory) -> None:
        self._store = store
        self._feed = ConfigFeed(store)
        self._states = StateChanges(store, directory, self.changes)
        self._nodes = NodeConfigs(store, directory)

    @property
    def changes(self) -> ChangeLog:
        """Changes reach the watch streams of every replica through this (ADR 0009)."""
        return self._feed.changes

    def close_watches(self) -> None:
        self._feed.close()

    # The label evaluator's calls

    def defined_labels(self) -> list[Label]:
        return self._feed.defined_labels()

    def set_label_members(self, label: str, members: set[str]) -> set[str]:
        return self._feed.set_label_members(label, members)

    def forget_labels_except(self, labels: Iterable[str]) -> set[str]:
        return self._feed.forget_labels_except(labels)

    # Plain configs (one block for every node)

    async def SetConfig(
        self, request: config_pb2.SetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ConfigDocument:
        return document_message(await self._states.set_config(request.config_json, request.author))

    async def GetConfig(
        self, request: config_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ConfigDocument:
        return document_message(self._store.live())

    # The managed state

    async def ApplyState(
        self, request: config_pb2.ApplyStateRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ApplyStateResponse:
        return await self._states.apply(
            request.state_json,
            request.author,
            request.comment,
            dry_run=request.dry_run,
            canary=Canary(request.canary_percent, request.canary_count),
        )

    async def ExportState(
        self, request: config_pb2.ExportStateRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        if request.version == 0:
            return version_message(self._store.live())
        return version_message(self._states.stored_version(request.version))

    async def ListVersions(
        self, request: config_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListVersionsResponse:
        return config_pb2.ListVersionsResponse(
            versions=[version_message(v) for v in self._store.versions()]
        )

    async def Rollback(
        self, request: config_pb2.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        return await self._states.rollback(request.version, request.author)

    # Staged rollout

    async def PromoteRollout(
        self, request: config_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        return version_message(await self._states.promote_rollout(request.author))

    async def AbortRollout(
        self, request: config_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.StateVersion:
        return version_message(await self._states.abort_rollout(request.author))

    async def RolloutStatus(
        self, request: config_pb2.RolloutStatusRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.RolloutStatusResponse:
        return await self._nodes.rollout_status()

    # Nodes

    async def NodeConfig(
        self, request: config_pb2.NodeConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.NodeConfigResponse:
        return await self._nodes.node_config(request.node_id)

    async def RecordConfigFetches(
        self, request: config_pb2.ConfigFetchBatch, context: grpc.aio.ServicerContext
    ) -> config_pb2.RecordConfigFetchesResponse:
        recorded = self._store.record_fetches(
            ConfigFetch(f.node_id, f.sha1, f.version, f.fetched_at) for f in request.fetches
        )
        metrics.FETCHES_RECORDED.inc(recorded)
        return config_pb2.RecordConfigFetchesResponse(recorded=recorded)

    # Labels

    async def ListLabels(
        self, request: config_pb2.ListLabelsRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListLabelsResponse:
        labels = sorted(self._feed.defined_labels(), key=lambda label: label.name)
        if request.name:
            labels = [label for label in labels if label.name == request.name]
            if not labels:
                raise Refused(
                    grpc.StatusCode.NOT_FOUND,
                    f"unknown label {request.name!r}: `quarry label list` shows those defined",
                )
        return config_pb2.ListLabelsResponse(
            labels=[
                config_pb2.LabelInfo(
                    name=label.name,
                    query=label.query,
                    interval=label.interval,
                    platforms=label.platforms,
                    member_node_ids=sorted(self._store.label_members(label.name)),
                )
                for label in labels
            ]
        )

    # Watching

    async def WatchConfig(
        self, request: config_pb2.WatchConfigRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.ConfigEvent]:
        async for event in self._feed.watch():
            yield event
