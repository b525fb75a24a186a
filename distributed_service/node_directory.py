"""The enrolled nodes a campaign targets (every node, or by tag), asked of the enroll service."""

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

    async def active_nodes(self, tags: list[str] | None = None) -> list[tuple[str, str]]:
        """(node_id, host_identifier) of every active node (not revoked, not pending
        approval), or of those with any of `tags`."""
        requests = [enroll_pb2.ListNodesRequest(status="active", tag=tag) for tag in tags or []]
        found: dict[str, str] = {}
        for request in requests or [enroll_pb2.ListNodesRequest(status="active")]:
            response = await self._stub.ListNodes(request, timeout=LIST_TIMEOUT_S)
            for node in response.nodes:
                if not node.revoked and not node.pending:
                    found[node.node_id] = node.host_identifier
        return list(found.items())

    async def close(self) -> None:
        await self._channel.close()
