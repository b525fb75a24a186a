"""The enrolled nodes and their label memberships, asked of the enroll and config services.

Both are read once per campaign launch, never per check-in; labels only when the
campaign targets some (ConfigService.ListLabels: every label defined, with its members).
"""

from __future__ import annotations

from distributed_service.targeting import TargetNode
from protos.v1 import config_pb2, config_pb2_grpc, enroll_pb2, enroll_pb2_grpc
from quarry.serving.grpc_runtime import aio_channel

LIST_TIMEOUT_S = 30.0


class NodeDirectory:
    """Lists enrolled nodes (EnrollService) and label memberships (ConfigService)."""

    def __init__(self, enroll_addr: str, config_addr: str) -> None:
        self.addr = enroll_addr
        self.config_addr = config_addr
        self._enroll_channel = aio_channel(enroll_addr)
        self._config_channel = aio_channel(config_addr)
        self._enroll = enroll_pb2_grpc.EnrollServiceStub(self._enroll_channel)
        self._config = config_pb2_grpc.ConfigServiceStub(self._config_channel)

    async def active_nodes(self) -> list[TargetNode]:
        """Every active node: not revoked, not pending approval."""
        request = enroll_pb2.ListNodesRequest(status="active")
        response = await self._enroll.ListNodes(request, timeout=LIST_TIMEOUT_S)
        return [
            TargetNode(
                node_id=node.node_id,
                host_identifier=node.host_identifier,
                platform=node.platform,
                osquery_version=node.osquery_version,
                # Every tag: the secret's and the live config's node_tags (ADR 0013).
                tags=frozenset(node.tags),
                # A node that enrolled and never checked in since was seen enrolling.
                last_seen_at=max(node.last_seen_at, node.enrolled_at),
            )
            for node in response.nodes
            if not node.revoked and not node.pending
        ]

    async def labels(self) -> dict[str, frozenset[str]]:
        """label -> the node ids in it now, for every label defined (ConfigService)."""
        response = await self._config.ListLabels(
            config_pb2.ListLabelsRequest(), timeout=LIST_TIMEOUT_S
        )
        return {label.name: frozenset(label.member_node_ids) for label in response.labels}

    async def close(self) -> None:
        await self._enroll_channel.close()
        await self._config_channel.close()
