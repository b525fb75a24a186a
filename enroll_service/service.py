"""The EnrollService gRPC servicer: translates messages and calls the rules.

Enrollment is in enrollment.py, the nodes in node_admin.py, enroll secrets in
secret_admin.py, admin tokens in token_admin.py (their RPCs, with the audit log's, in
admin_token_service.py), the node change feed (WatchNodes) in node_feed.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from enroll_service.admin_token_service import AdminTokenRpcs
from enroll_service.admin_tokens import AdminTokenStore
from enroll_service.clone_watch import CloneWatch
from enroll_service.config_tags import ConfigTags
from enroll_service.enroll_secrets import secret_message
from enroll_service.enrollment import Enrollment
from enroll_service.gauges import refresh_gauges
from enroll_service.node_admin import NodeAdmin
from enroll_service.node_feed import NodeFeed
from enroll_service.node_identity import ClonePolicy
from enroll_service.node_messages import certificate_from_json, node_message
from enroll_service.secret_admin import NewSecret, SecretAdmin
from enroll_service.store import NodeFilter, NodeRecord, NodeStore
from enroll_service.token_admin import TokenAdmin
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.runtime.settings import Settings
from quarry.state.change_log import ChangeLog


class EnrollServicer(AdminTokenRpcs, enroll_pb2_grpc.EnrollServiceServicer):
    def __init__(
        self,
        settings: Settings,
        store: NodeStore,
        tokens: AdminTokenStore,
        config_tags: ConfigTags | None = None,
    ) -> None:
        self._store = store
        self._config_tags = config_tags
        self._tokens = tokens
        self._token_admin = TokenAdmin(tokens)
        self._feed = NodeFeed(store)
        self._clones = CloneWatch(ClonePolicy.from_settings(settings), store)
        self._enrollment = Enrollment(settings, store, self.changes, self._clones)
        self._nodes = NodeAdmin(store, self.changes, self._clones, self._tags_of)
        self._secrets = SecretAdmin(settings, store, self.refresh_gauges)
        self._secrets.sync_shared_secret()
        self.refresh_gauges()

    @property
    def changes(self) -> ChangeLog:
        """Node events reach the watch streams of every replica through this (ADR 0009)."""
        return self._feed.changes

    def close_watches(self) -> None:
        self._feed.close()

    async def close(self) -> None:
        await self._enrollment.close()

    def _tags_of(self, record: NodeRecord) -> frozenset[str]:
        """Every tag of the node: its secret's and the live config's node_tags."""
        if self._config_tags is None:
            return frozenset(record.tags)
        return frozenset(record.tags) | self._config_tags.of(record.node_id, record.host_identifier)

    def announce_seen(self) -> int:
        return self._nodes.announce_seen()

    def refresh_gauges(self) -> None:
        refresh_gauges(self._store, self._clones)

    # Enrollment

    async def Enroll(
        self, request: enroll_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        return (await self._enrollment.enroll_all([request]))[0]

    async def EnrollMany(
        self, request: enroll_pb2.EnrollManyRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollManyResponse:
        responses = await self._enrollment.enroll_all(request.requests)
        return enroll_pb2.EnrollManyResponse(responses=responses)

    # The gateway's calls

    async def WatchNodes(
        self, request: enroll_pb2.WatchNodesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[enroll_pb2.NodeEvent]:
        async for event in self._feed.watch():
            yield event

    async def GetNode(
        self, request: enroll_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        record = self._nodes.by_key(request.node_key)
        return enroll_pb2.Node(found=False) if record is None else node_message(record)

    async def RecordCheckins(
        self, request: enroll_pb2.CheckinBatch, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.RecordCheckinsResponse:
        recorded = self._nodes.record_checkins([(c.node_id, c.seen_at) for c in request.checkins])
        return enroll_pb2.RecordCheckinsResponse(recorded=recorded)

    # Nodes (admin)

    async def ListNodes(
        self, request: enroll_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListNodesResponse:
        node_filter = NodeFilter(
            status=request.status,
            tag=request.tag,
            platform=request.platform,
            secret_name=request.secret_name,
            search=request.search,
        )
        records = self._nodes.list(node_filter, request.suspected_clones)
        return enroll_pb2.ListNodesResponse(
            nodes=[node_message(record, self._tags_of(record)) for record in records]
        )

    async def ShowNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.NodeDetails:
        view = self._nodes.show(request.node)
        return enroll_pb2.NodeDetails(
            node=node_message(view.record, self._tags_of(view.record)),
            host_details_json=view.host_details_json,
            recent_enrollments=view.recent_enrollments,
            suspected_clone=view.suspected_clone,
            client_certificate=certificate_from_json(view.certificate_json),
        )

    async def ResolveNodes(
        self, request: enroll_pb2.ResolveNodesRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ResolveNodesResponse:
        nodes = [node_message(record) for record in self._nodes.resolve(list(request.refs))]
        for node in nodes:
            node.node_key = ""  # a credential; naming a node never needs it
        return enroll_pb2.ResolveNodesResponse(nodes=nodes)

    async def RevokeNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        return node_message(await self._nodes.revoke(request.node))

    async def ApproveNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        return node_message(await self._nodes.approve(request.node))

    async def RejectNode(
        self, request: enroll_pb2.NodeRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.Node:
        return node_message(await self._nodes.reject(request.node))

    # Enroll secrets (admin)

    async def CreateSecret(
        self, request: enroll_pb2.CreateSecretRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.CreatedSecret:
        return _created(self._secrets.create(request))

    async def ListSecrets(
        self, request: enroll_pb2.ListSecretsRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.ListSecretsResponse:
        now = int(time.time())
        records = self._secrets.list(request.include_inactive, now)
        return enroll_pb2.ListSecretsResponse(
            secrets=[secret_message(record, now) for record in records]
        )

    async def RevokeSecret(
        self, request: enroll_pb2.SecretRef, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.EnrollSecret:
        now = int(time.time())
        return secret_message(self._secrets.revoke(request.secret, now), now)

    async def RotateSecret(
        self, request: enroll_pb2.RotateSecretRequest, context: grpc.aio.ServicerContext
    ) -> enroll_pb2.CreatedSecret:
        return _created(self._secrets.rotate(request.secret, request.grace_seconds))


def _created(new: NewSecret) -> enroll_pb2.CreatedSecret:
    return enroll_pb2.CreatedSecret(secret=secret_message(new.record, new.now), value=new.value)
