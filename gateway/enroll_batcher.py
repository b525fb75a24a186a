"""Enroll requests that arrive together go to the enroll service as one EnrollMany call.

A storm of new hosts (a data-centre reboot, a migration) then costs one gRPC call and
one transaction per group instead of one each. At most one call is in flight per gateway
process (the next group forms while it runs) and at most MAX_WAITING requests wait, so
enrollments never crowd out what check-ins need from the enroll service (GetNode,
RecordCheckins, the watch stream): docs/enrollment.md, "Enrollment storms".
"""

from __future__ import annotations

from protos.v1 import enroll_pb2, enroll_pb2_grpc
from quarry.runtime.group_commit import GroupCommit

MAX_GROUP = 250
MAX_WAITING = 5000
ENROLL_TIMEOUT_S = 10.0


class EnrollBatcher:
    def __init__(self, stub: enroll_pb2_grpc.EnrollServiceStub) -> None:
        self._stub = stub
        self._groups: GroupCommit[enroll_pb2.EnrollRequest, enroll_pb2.EnrollResponse] = (
            GroupCommit(self._send, MAX_GROUP)
        )

    @property
    def full(self) -> bool:
        """Too many enrollments already wait: refuse more (osquery retries later)."""
        return self._groups.waiting >= MAX_WAITING

    async def enroll(self, request: enroll_pb2.EnrollRequest) -> enroll_pb2.EnrollResponse:
        """The enroll service's answer; raises grpc.aio.AioRpcError when it cannot answer."""
        return await self._groups.submit(request)

    async def _send(
        self, requests: list[enroll_pb2.EnrollRequest]
    ) -> list[enroll_pb2.EnrollResponse]:
        reply = await self._stub.EnrollMany(
            enroll_pb2.EnrollManyRequest(requests=requests), timeout=ENROLL_TIMEOUT_S
        )
        return list(reply.responses)

    async def close(self) -> None:
        await self._groups.close()
