"""The enrolled nodes a campaign for "every node" targets, asked of the enroll service."""

from __future__ import annotations

from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.grpc_runtime import aio_channel

LIST_TIMEOUT_S = 30.0


class NodeDirectory:
    """Lists enrolled nodes through EnrollService.ListNodes (never by importing it)."""

    def __init__(self, enroll_addr: str) -> None:
        self.addr = enroll_addr
        self._channel = aio_channel(enroll_addr)
        self._stub = enroll_pb2_grpc.EnrollServiceStub(self._channel)

    async def valid_nodes(self) -> list[tuple[str, str]]:
        """(node_id, host_identifier) of every node that is not revoked."""
        response = await self._stub.ListNodes(enroll_pb2.ListNodesRequest(), timeout=LIST_TIMEOUT_S)
        return [(n.node_id, n.host_identifier) for n in response.nodes if not n.revoked]

    async def close(self) -> None:
        await self._channel.close()
