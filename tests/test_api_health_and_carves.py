"""Single modules on their own: the carve reader of the distributed service against a
real carve store on disk (a changed archive ends its stream with DATA_LOSS), the API's
health route against services that are not there, and the route labels of its metrics.

The end-to-end paths (carves through the gateway, the distributed service and the API;
health and metrics of a running API) are in tests/test_api.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from starlette.routing import Route

from api_service.backends import Backends
from api_service.health import api_health
from api_service.metrics import route_label
from api_service.routing import Call
from distributed_service.carves import CHUNK_BYTES, CarveReader
from protos.v1 import distributed_pb2
from quarry.access.admin_auth import Refused
from quarry.runtime.settings import Settings
from quarry.state.carve_store import RECEIVING, Carve, CarveStore
from tests.free_ports import free_port_base

DATA = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)  # two full chunks and a bit


def stored_carve(directory: Path, data: bytes, blocks_in: bool = True) -> Carve:
    store = CarveStore(directory)
    block_size = CHUNK_BYTES
    count = -(-len(data) // block_size)
    now = time.time()
    carve = store.create(
        Carve(
            session_id="s" * 32,
            carve_id="carve-1",
            request_id="r1",
            node_id="n1",
            host_identifier="host-1",
            block_count=count,
            block_size=block_size,
            carve_size=len(data),
            blocks_received=0,
            bytes_received=0,
            status=RECEIVING,
            sha256="",
            compression="",
            started_at=now,
            updated_at=now,
            completed_at=0,
        )
    )
    last = count if blocks_in else count - 1
    for block_id in range(last):
        block = data[block_id * block_size : (block_id + 1) * block_size]
        store.put_block(carve.session_id, block_id, block, expiry_s=3600)
    return store.complete(carve.session_id) or carve


async def read_all(
    reader: CarveReader, carve: str
) -> tuple[list[distributed_pb2.CarveChunk], bytes]:
    chunks = [chunk async for chunk in reader.chunks(carve)]
    return chunks, b"".join(c.data for c in chunks)


def test_a_complete_carve_streams_in_order_with_its_record_first(tmp_path: Path) -> None:
    carve = stored_carve(tmp_path, DATA)
    reader = CarveReader(tmp_path)
    chunks, data = asyncio.run(read_all(reader, "carve-1"))  # osquery's carve id works too
    assert data == DATA and len(chunks) == 3
    assert chunks[0].carve.sha256 == hashlib.sha256(DATA).hexdigest() == carve.sha256
    assert [c.offset for c in chunks] == [0, CHUNK_BYTES, 2 * CHUNK_BYTES]
    assert not chunks[1].HasField("carve")
    listed = reader.listed(distributed_pb2.ListCarvesRequest(status="complete"))
    assert [c.session_id for c in listed] == [carve.session_id]


def test_an_archive_changed_on_disk_ends_the_stream_with_data_loss(tmp_path: Path) -> None:
    carve = stored_carve(tmp_path, DATA)
    with (tmp_path / f"{carve.session_id}.carve").open("r+b") as archive:
        archive.seek(CHUNK_BYTES + 10)
        archive.write(b"X")
    with pytest.raises(Refused) as refused:
        asyncio.run(read_all(CarveReader(tmp_path), carve.session_id))
    assert refused.value.code == grpc.StatusCode.DATA_LOSS
    assert "changed on disk" in refused.value.message


def test_unfinished_unknown_and_absent_carves_are_refused_clearly(tmp_path: Path) -> None:
    empty = CarveReader(tmp_path / "never-made")
    assert empty.listed(distributed_pb2.ListCarvesRequest()) == []
    assert not (tmp_path / "never-made").exists()  # reading never creates the store
    stored_carve(tmp_path, DATA, blocks_in=False)
    reader = CarveReader(tmp_path)
    for name, code in (
        ("carve-1", grpc.StatusCode.FAILED_PRECONDITION),
        ("nope", grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(Refused) as refused:
            asyncio.run(read_all(reader, name))
        assert refused.value.code == code, name
    with pytest.raises(Refused) as bad:
        reader.listed(distributed_pb2.ListCarvesRequest(status="lost"))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_health_is_503_naming_the_services_that_do_not_answer() -> None:
    # Real channels to ports nothing listens on.
    settings = Settings.from_env({"QUARRY_PORT_BASE": str(free_port_base())})

    async def ask() -> object:
        backends = Backends.connect(settings)
        try:
            return await api_health(Call(None, "", {}, {}, backends))  # type: ignore[arg-type]
        finally:
            await backends.close()

    answer = asyncio.run(ask())
    assert answer.status_code == 503  # type: ignore[attr-defined]
    message = answer.body.decode()  # type: ignore[attr-defined]
    assert '"code":"unavailable"' in message and "not every service serves" in message
    for service in ("enroll", "config", "distributed", "ingest"):
        assert f"{service} service unavailable" in message, message


def test_metrics_label_requests_by_route_template_never_by_value() -> None:
    route = Route("/api/v1/hosts/{host}", lambda request: None)
    assert route_label({"route": route, "path": "/api/v1/hosts/web-01"}) == "/api/v1/hosts/{host}"
    assert route_label({"path": "/nothing"}) == "unmatched"
    assert route_label({"route": SimpleNamespace(path="")}) == "unmatched"
