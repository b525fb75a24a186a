"""Reading the carves the gateways stored: the index, one carve, a complete carve's bytes.

The gateways write the carve store on the disk they share (quarry/state/carve_store.py,
docs/adr/0008-file-carving.md); this service reads the same directory (QUARRY_CARVE_DIR,
else state_dir/carves) so that people and the REST API reach carves over gRPC, with the
admin gate's role checks and audit, instead of reading the state directory. Reading
never creates the store: before the first carve there is none, and the list is empty.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from protos.v1 import distributed_pb2
from quarry.access.admin_auth import Refused
from quarry.state.carve_store import COMPLETE, EXPIRED, RECEIVING, Carve, CarveStore

STATUSES = (RECEIVING, COMPLETE, EXPIRED)
# Well under gRPC's 4 MiB message limit; the REST API passes each on as it comes.
CHUNK_BYTES = 1024 * 1024


class CarveReader:
    """The carve store of one directory, opened once it exists."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._store: CarveStore | None = None

    def _opened(self) -> CarveStore | None:
        if self._store is None and (self._directory / "index.sqlite3").exists():
            self._store = CarveStore(self._directory)
        return self._store

    def listed(self, request: distributed_pb2.ListCarvesRequest) -> list[Carve]:
        if request.status and request.status not in STATUSES:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"status must be one of {', '.join(STATUSES)}; got {request.status!r}",
            )
        if request.limit < 0:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "limit must be >= 0")
        store = self._opened()
        carves = store.list() if store else []
        carves = [
            c
            for c in carves
            if (not request.status or c.status == request.status)
            and (not request.host_identifier or c.host_identifier == request.host_identifier)
        ]
        return carves[: request.limit] if request.limit else carves

    def found(self, carve_or_session_id: str) -> Carve:
        store = self._opened()
        carve = store.find(carve_or_session_id) if store and carve_or_session_id else None
        if carve is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no carve {carve_or_session_id!r}")
        return carve

    async def chunks(self, carve_or_session_id: str) -> AsyncIterator[distributed_pb2.CarveChunk]:
        """The archive in order, its hash checked against the index as it is read."""
        carve = self.found(carve_or_session_id)
        if carve.status != COMPLETE:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"carve {carve_or_session_id} is {carve.status} ({carve.blocks_received}/"
                f"{carve.block_count} blocks); only a complete carve can be downloaded",
            )
        store = self._opened()
        assert store is not None  # found() opened it
        digest = hashlib.sha256()
        try:
            archive = store.data_path(carve.session_id).open("rb")
        except FileNotFoundError:
            raise Refused(
                grpc.StatusCode.NOT_FOUND, f"carve {carve_or_session_id} was deleted"
            ) from None
        with archive:
            # The first chunk carries the carve's record, even for an empty archive.
            data = await asyncio.to_thread(archive.read, CHUNK_BYTES)
            digest.update(data)
            yield distributed_pb2.CarveChunk(carve=carve_message(carve), offset=0, data=data)
            offset = len(data)
            while data := await asyncio.to_thread(archive.read, CHUNK_BYTES):
                digest.update(data)
                yield distributed_pb2.CarveChunk(offset=offset, data=data)
                offset += len(data)
        if digest.hexdigest() != carve.sha256:
            raise Refused(
                grpc.StatusCode.DATA_LOSS,
                f"the stored archive's sha256 is {digest.hexdigest()}, not {carve.sha256}:"
                " it changed on disk after the carve completed",
            )


TIMES = ("started_at", "updated_at", "completed_at")


def carve_message(carve: Carve) -> distributed_pb2.CarveInfo:
    """The index row; its times in whole Unix seconds, as every other message's."""
    fields = carve.to_json()
    return distributed_pb2.CarveInfo(
        **{k: int(v) if k in TIMES else v for k, v in fields.items()}  # type: ignore[arg-type]
    )
