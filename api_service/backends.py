"""The services behind the API: one gRPC channel to each, every call with the caller's token.

The channels are Quarry's own (quarry/serving/grpc_runtime.py: internal TLS when on,
reconnects, client metrics) but carry no token of their own: each call presents the
`Authorization: Bearer` token of the HTTP request it serves, or none. So the services'
admin gate decides and audits every call exactly as for the CLI (quarry/access/admin_auth.py),
and the API never acts with more than its caller's role (docs/adr/0014-rest-api-over-grpc.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from api_service.errors import ApiError, from_rpc_error
from protos.v1 import (
    config_pb2_grpc,
    detection_pb2_grpc,
    distributed_pb2_grpc,
    enroll_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import aio_channel

RPC_TIMEOUT_S = 30.0
# The services the health route asks; the detection service is reached too, for its rules.
SERVICE_NAMES = ("enroll", "config", "distributed", "ingest")
CHANNEL_NAMES = (*SERVICE_NAMES, "detection")


def caller_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that presents the caller's token; none when it sent none."""
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass
class Backends:
    """Stubs of the enroll, config, distributed, log-store and detection services."""

    enroll: enroll_pb2_grpc.EnrollServiceStub
    config: config_pb2_grpc.ConfigServiceStub
    distributed: distributed_pb2_grpc.DistributedServiceStub
    logs: logs_pb2_grpc.LogStoreStub
    detection: detection_pb2_grpc.DetectionServiceStub
    # By service name, in CHANNEL_NAMES order (the health route asks SERVICE_NAMES').
    channels: dict[str, grpc.aio.Channel]

    @classmethod
    def connect(cls, settings: Settings) -> Backends:
        # token="": the channel adds none of its own (not the service token: that would
        # give every caller the services' role).
        def channel(service: str) -> grpc.aio.Channel:
            return aio_channel(settings.service_addr(service), token="", settings=settings)

        channels = {s: channel(s) for s in CHANNEL_NAMES}
        return cls(
            enroll=enroll_pb2_grpc.EnrollServiceStub(channels["enroll"]),
            config=config_pb2_grpc.ConfigServiceStub(channels["config"]),
            distributed=distributed_pb2_grpc.DistributedServiceStub(channels["distributed"]),
            logs=logs_pb2_grpc.LogStoreStub(channels["ingest"]),
            detection=detection_pb2_grpc.DetectionServiceStub(channels["detection"]),
            channels=channels,
        )

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def call(method: Any, request: Message, token: str) -> Any:
    """One unary call as the caller; a failure becomes the ApiError of the same meaning."""
    try:
        return await method(request, timeout=RPC_TIMEOUT_S, metadata=caller_metadata(token))
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc


async def stream(method: Any, request: Message, token: str) -> AsyncIterator[Any]:
    """A server stream as the caller; its first message is read before this returns, so a
    refusal is an ApiError (an HTTP error answer), not a broken event stream."""
    call_ = method(request, metadata=caller_metadata(token))
    messages = call_.__aiter__()
    try:
        first = await messages.__anext__()
    except StopAsyncIteration:
        return _empty()
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc

    async def rest() -> AsyncIterator[Any]:
        try:
            yield first
            async for message in messages:
                yield message
        finally:
            call_.cancel()

    return rest()


async def _empty() -> AsyncIterator[Any]:
    return
    yield


async def sql_rows(backends: Backends, sql: str, token: str) -> list[list[Any]]:
    """The rows of a read-only query the API composed, through the log store (LogStore.Query:
    the role checks and the read-only session of `quarry sql` apply, docs/security.md)."""
    reply = await call(backends.logs.Query, logs_pb2.SqlRequest(sql=sql), token)
    if reply.error:
        raise ApiError(502, "log_store", " ".join(reply.error.split())[:500])
    return [json.loads(row) for row in reply.rows_json]
