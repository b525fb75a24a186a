"""The enrolled nodes and their label memberships, asked of the enroll and config services.

Both are read once per campaign launch, never per check-in. Labels have no RPC of their
own: the first event of ConfigService.WatchConfig carries every node's memberships, so
a launch opens that stream, reads the first event and closes it.
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

    async def label_memberships(self) -> dict[str, frozenset[str]]:
        """node id -> the dynamic labels it is in now (the config service's snapshot)."""
        stream = self._config.WatchConfig(config_pb2.WatchConfigRequest(), timeout=LIST_TIMEOUT_S)
        try:
            async for event in stream:
                return {m.node_id: frozenset(m.labels) for m in event.memberships}
        finally:
            stream.cancel()
        return {}

    async def close(self) -> None:
        await self._enroll_channel.close()
        await self._config_channel.close()
