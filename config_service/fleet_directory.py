"""The enrolled nodes whose configs the service composes, asked of the enroll service.

Config targeting needs a node's platform (from its host details) and its enroll
secret's tags; the enroll service owns both, so they are fetched through its gRPC
API, never by importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.serving.grpc_runtime import aio_channel

LIST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FleetNode:
    node_id: str
    host_identifier: str
    # os_version.platform from host details ("ubuntu", "darwin", ...).
    platform: str
    tags: frozenset[str]
    pending: bool
    revoked: bool


class FleetDirectory:
    """Lists and looks up nodes through EnrollService.ListNodes and ShowNode."""

    def __init__(self, enroll_addr: str) -> None:
        self.addr = enroll_addr
        self._channel = aio_channel(enroll_addr)
        self._stub = enroll_pb2_grpc.EnrollServiceStub(self._channel)

    async def active_nodes(self) -> list[FleetNode]:
        """Every node that is neither revoked nor waiting for approval."""
        response = await self._stub.ListNodes(
            enroll_pb2.ListNodesRequest(status="active"), timeout=LIST_TIMEOUT_S
        )
        nodes = (fleet_node(node) for node in response.nodes)
        return [node for node in nodes if not node.pending and not node.revoked]

    async def node(self, node_id: str) -> FleetNode | None:
        """One node by id (or key or host identifier); None when the enroll service has none."""
        try:
            details = await self._stub.ShowNode(
                enroll_pb2.NodeRef(node=node_id), timeout=LIST_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return fleet_node(details.node) if details.node.node_id else None

    async def close(self) -> None:
        await self._channel.close()


def fleet_node(node: enroll_pb2.Node) -> FleetNode:
    return FleetNode(
        node_id=node.node_id,
        host_identifier=node.host_identifier,
        platform=node.platform,
        # The secret's tags: the config's node_tags are added per state composed (a
        # rollout's candidate may give others than the live state).
        tags=frozenset(node.secret_tags),
        pending=node.pending,
        revoked=node.revoked,
    )
