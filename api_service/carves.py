"""Carves: the files osquery uploaded, listed and downloaded through the distributed
service (DistributedService.ListCarves, GetCarve, DownloadCarve; docs/carving.md).

A download is streamed as the service sends it, a chunk at a time, so no archive is
held in memory whatever its size. The service checks the archive's SHA-256 as it reads:
when the bytes changed on disk the stream fails before its end, so the client sees a
response shorter than its Content-Length rather than a wrong file; the recorded hash is
in the X-Carve-SHA256 header for the client to check too.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from api_service.backends import call, stream
from api_service.errors import ApiError
from api_service.json_messages import message_json
from api_service.metrics import OpenStream
from api_service.routing import Call, Endpoint, Param, page
from api_service.schemas import Schema, message_schema, page_of
from protos.v1 import distributed_pb2

CARVE = message_schema(distributed_pb2.CarveInfo.DESCRIPTOR, "Carve")
CARVE_STATUSES = ("receiving", "complete", "expired")
CARVE_PARAM = Param("carve", "a carve session id, or osquery's carve id", where="path")
ARCHIVE: Schema = {
    "type": "string",
    "format": "binary",
    "description": "the archive as osquery uploaded it (tar, or zstd-compressed tar)",
}


async def list_carves(call_: Call) -> dict:
    request = distributed_pb2.ListCarvesRequest(
        status=call_.params["status"] or "", host_identifier=call_.params["host"] or ""
    )
    reply = await call(call_.backends.distributed.ListCarves, request, call_.token)
    return page([message_json(c) for c in reply.carves], call_)


async def show_carve(call_: Call) -> dict:
    request = distributed_pb2.GetCarveRequest(carve=call_.params["carve"])
    return message_json(await call(call_.backends.distributed.GetCarve, request, call_.token))


def archive_name(carve: distributed_pb2.CarveInfo) -> str:
    """carve_id.tar(.zst), with nothing that could break the header or a path."""
    suffix = ".tar.zst" if carve.compression == "zstd" else ".tar"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", (carve.carve_id or carve.session_id) + suffix)


async def download_carve(call_: Call) -> StreamingResponse:
    request = distributed_pb2.GetCarveRequest(carve=call_.params["carve"])
    # The first chunk (with the carve's record) is read here: a refusal is a JSON error.
    chunks = await stream(call_.backends.distributed.DownloadCarve, request, call_.token)
    first = await anext(chunks, None)
    if first is None:
        raise ApiError(502, "internal", "the distributed service sent no part of the carve")
    carve = first.carve
    return StreamingResponse(
        _bytes(first, chunks),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{archive_name(carve)}"',
            "Content-Length": str(carve.carve_size),
            "X-Carve-SHA256": carve.sha256,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _bytes(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    with OpenStream("download"):
        try:
            yield first.data
            async for chunk in rest:
                yield chunk.data
        finally:
            await rest.aclose()  # type: ignore[attr-defined]


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/carves",
        list_carves,
        "carves (files osquery uploaded), newest first",
        "read-only",
        page_of(CARVE),
        (
            Param("status", "only carves in this state", enum=CARVE_STATUSES),
            Param("host", "only this host identifier's carves"),
        ),
        paged=True,
        tags=("carves",),
    ),
    Endpoint(
        "GET",
        "/api/v1/carves/{carve}",
        show_carve,
        "one carve: its host, progress, size and sha256",
        "read-only",
        CARVE,
        (CARVE_PARAM,),
        tags=("carves",),
    ),
    Endpoint(
        "GET",
        "/api/v1/carves/{carve}/download",
        download_carve,
        "a complete carve's archive, streamed",
        "operator",
        ARCHIVE,
        (CARVE_PARAM,),
        media="application/octet-stream",
        tags=("carves",),
    ),
]
