"""File carving end to end: emulated osquery carvers against a cluster started by `quarry up`.

Every carve crosses the real HTTPS gateway (two workers sharing one carve store), is
stored on disk as it arrives, and is read back with `quarry carve list|show|get`, the
way a person would. Lost requests and lost answers are made by the emulator's own
retry logic: a subclass drops one attempt of a chosen block, as a reset connection would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import itertools
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import zstandard

from protos.v1 import distributed_pb2
from quarry.cli.commands.admin import CommandError
from quarry.cli.commands.carves import receive_verified
from tests.emulator import OSQUERY_DOC_ENDPOINTS, HostProfile, OsqueryNode
from tests.emulator.http_client import HttpResponse
from tests.emulator.tables import QueryOutcome, TableExecutor
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

MIB = 1024 * 1024
_host_numbers = itertools.count(1)

CARVE_ENV = {
    "QUARRY_GATEWAY_WORKERS": "2",
    "QUARRY_CARVE_MAX_BYTES": str(32 * MIB),
    "QUARRY_CARVE_MAX_BLOCK_BYTES": str(1 * MIB),
    "QUARRY_CARVE_MAX_BLOCKS": "4096",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("carving"), extra_env=CARVE_ENV) as running:
        yield running


class LossyNode(OsqueryNode):
    """An emulated node whose network loses chosen carve blocks once.

    `lose_requests`: these blocks' first attempt never reaches the server.
    `lose_answers`: these blocks reach the server but the answer is lost, so osquery
    sends them again (a duplicate).
    """

    lose_requests: set[int]
    lose_answers: set[int]

    async def _post(
        self, plugin: str, endpoint: str, body: bytes, key: str, compressed: bool = False
    ) -> HttpResponse | None:
        block_id = _block_id(body) if endpoint == self.endpoints.carve_continue else None
        if block_id in self.lose_requests:
            self.lose_requests.discard(block_id)
            self.last_error = "Request error: connection reset (lost by the test)"
            return None
        response = await super()._post(plugin, endpoint, body, key, compressed)
        if block_id in self.lose_answers:
            self.lose_answers.discard(block_id)
            return None
        return response


def _block_id(body: bytes) -> int:
    return orjson.loads(body)["block_id"]


def new_node(cluster: QuarryCluster, node_class: type[OsqueryNode] = OsqueryNode, **options):
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
    defaults: dict[str, object] = {
        "server": cluster.gateway,
        "ca_file": cluster.ca_cert,
        "enroll_secret": cluster.enroll_secret,
        "profile": profile,
        "host_identifier": profile.hardware_uuid.lower(),
        "retry_time_scale": 0,
    }
    return node_class(**{**defaults, **options})


def real_tar_archive(minimum_bytes: int) -> bytes:
    """A PAX tar of real files from this machine (what osquery uploads), at least this big."""
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(Path(sys.prefix, "lib").rglob("*.py")):
            archive.add(path, arcname=f"/tmp/osquery_carve_test{path}")
            total += path.stat().st_size
            if total >= minimum_bytes:
                break
    assert total >= minimum_bytes
    return buffer.getvalue()


def show(cluster: QuarryCluster, carve_id: str) -> dict:
    return cluster.cli_json("carve", "show", carve_id)  # type: ignore[return-value]


def completed(cluster: QuarryCluster, carve_id: str) -> dict:
    carve = eventually(lambda: (c := show(cluster, carve_id))["status"] == "complete" and c)
    assert carve, show(cluster, carve_id)
    return carve


def gateway_post(cluster: QuarryCluster, path: str, body: dict, node_key: str = "") -> dict:
    headers = {"Authorization": f"NodeKey {node_key}"} if node_key else {}
    with httpx.Client(verify=ssl.create_default_context(cafile=cluster.ca_cert)) as client:
        response = client.post(f"https://{cluster.gateway}{path}", json=body, headers=headers)
    return response.json()


def start_body(node_key: str, size: int, block_size: int, **overrides: object) -> dict:
    return {
        "block_count": -(-size // block_size),
        "block_size": block_size,
        "carve_size": size,
        "carve_id": str(uuid.uuid4()),
        "request_id": str(uuid.uuid4()),
        "node_key": node_key,
        **overrides,
    }


def block_body(session_id: str, block_id: int, data: bytes) -> dict:
    return {
        "block_id": block_id,
        "session_id": session_id,
        "request_id": "r",
        "data": base64.b64encode(data).decode(),
    }


async def carve_with(node: OsqueryNode, data: bytes, carve_id: str = ""):
    async with node:
        return await node.carve(data, carve_id)


# --- whole carves ---------------------------------------------------------------------


def test_a_multi_megabyte_file_is_carved_stored_and_read_back_intact(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    archive = real_tar_archive(5 * MIB)
    node = new_node(cluster, carver_block_size=256 * 1024)
    result = asyncio.run(carve_with(node, archive))
    assert result.ok, node.last_error

    carve = completed(cluster, result.carve_id)
    assert carve["sha256"] == hashlib.sha256(archive).hexdigest()
    assert carve["blocks_received"] == carve["block_count"] == -(-len(archive) // (256 * 1024))
    assert carve["host_identifier"] == node.host_identifier
    listed = cluster.cli_json("carve", "list")
    assert result.session_id in [c["session_id"] for c in listed]  # type: ignore[union-attr]

    out = tmp_path / "carve.tar"
    got = cluster.cli("carve", "get", result.carve_id, "-o", str(out))
    assert out.read_bytes() == archive
    assert "verified" in got.stderr
    # Six 1 MiB chunks: progress as bytes of the total, a line per 10% off a terminal.
    shown = re.findall(r"([\d.]+ [KM]iB) of ([\d.]+ MiB) received \((\d+)%\)", got.stderr)
    assert len(shown) >= 5, got.stderr
    assert {total for _, total, _ in shown} == {f"{len(archive) / MIB:.1f} MiB"}
    assert shown[-1][2] == "100" and [int(p) for *_, p in shown] == sorted(
        int(p) for *_, p in shown
    )
    assert [p.name for p in tmp_path.iterdir()] == ["carve.tar"]  # no partial file left
    with tarfile.open(out) as extracted:
        assert len(extracted.getnames()) > 10


def test_lost_blocks_are_sent_again_and_a_duplicate_is_stored_once(cluster: QuarryCluster) -> None:
    data = real_tar_archive(300 * 1024)
    node = new_node(cluster, node_class=LossyNode, endpoints=OSQUERY_DOC_ENDPOINTS)
    node.carver_block_size = 16 * 1024
    node.lose_requests = {2, 9}  # never reached the gateway: osquery tries again
    node.lose_answers = {4}  # stored, but osquery did not hear so: sent twice
    result = asyncio.run(carve_with(node, data))
    assert result.ok, node.last_error
    assert not node.lose_requests and not node.lose_answers  # every loss happened

    carve = completed(cluster, result.carve_id)
    assert carve["sha256"] == hashlib.sha256(data).hexdigest()
    assert carve["blocks_received"] == carve["block_count"]
    assert carve["bytes_received"] == len(data)  # block 4 counted once


def test_blocks_out_of_order_and_a_repeated_block_make_the_same_archive(
    cluster: QuarryCluster,
) -> None:
    node = new_node(cluster)
    key = asyncio.run(_enroll(node))
    data = bytes(range(256)) * 1000  # 256,000 bytes: 4 blocks of 64 KiB, the last shorter
    begin = gateway_post(cluster, "/carve/start", start_body(key, len(data), 65536), key)
    session_id = begin["session_id"]
    for block_id in (3, 1, 1, 0):
        chunk = data[block_id * 65536 : (block_id + 1) * 65536]
        answer = gateway_post(cluster, "/carve/continue", block_body(session_id, block_id, chunk))
        assert "error" not in answer
    assert show(cluster, session_id)["blocks_received"] == 3
    assert show(cluster, session_id)["status"] == "receiving"
    gateway_post(cluster, "/carve/continue", block_body(session_id, 2, data[2 * 65536 : 3 * 65536]))
    carve = completed(cluster, session_id)
    assert carve["sha256"] == hashlib.sha256(data).hexdigest()
    # A block re-sent after completion is accepted and changes nothing.
    again = gateway_post(cluster, "/carve/continue", block_body(session_id, 0, data[:65536]))
    assert again == {"blocks_received": 4, "block_count": 4}


def test_a_zstd_carve_is_kept_as_sent_and_decompressed_on_request(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    tar = real_tar_archive(2 * MIB)
    compressed = zstandard.ZstdCompressor(level=1).compress(tar)  # --carver_compression
    node = new_node(cluster, carver_block_size=128 * 1024)
    result = asyncio.run(carve_with(node, compressed))
    assert result.ok, node.last_error

    carve = completed(cluster, result.carve_id)
    assert carve["compression"] == "zstd"
    assert carve["sha256"] == hashlib.sha256(compressed).hexdigest()
    raw, plain = tmp_path / "carve.tar.zst", tmp_path / "carve.tar"
    cluster.cli("carve", "get", result.session_id, "-o", str(raw))
    assert raw.read_bytes() == compressed
    summary = cluster.cli_json("carve", "get", result.session_id, "-o", str(plain), "--decompress")
    assert plain.read_bytes() == tar
    assert summary == {
        "session_id": result.session_id,
        "carve_id": result.carve_id,
        "output": str(plain),
        "bytes_written": len(tar),
        "sha256": carve["sha256"],
        "decompressed": True,
    }


# --- refusals -------------------------------------------------------------------------


def test_a_block_for_an_unknown_session_gets_a_clear_error(cluster: QuarryCluster) -> None:
    answer = gateway_post(
        cluster, "/api/v1/osquery/carve/block", block_body("no-such-session", 0, b"x")
    )
    assert answer == {"error": "unknown carve session 'no-such-session'"}
    assert gateway_post(cluster, "/carve/continue", {"block_id": 0}) == {
        "error": "session_id must be a non-empty string"
    }


def test_a_block_of_the_wrong_size_or_from_another_node_is_refused(
    cluster: QuarryCluster,
) -> None:
    owner, other = new_node(cluster), new_node(cluster)
    key, other_key = asyncio.run(_enroll(owner)), asyncio.run(_enroll(other))
    session_id = gateway_post(cluster, "/carve/start", start_body(key, 10_000, 8192), key)[
        "session_id"
    ]
    short = gateway_post(cluster, "/carve/continue", block_body(session_id, 0, b"x" * 100))
    assert "must hold 8192" in short["error"]
    beyond = gateway_post(cluster, "/carve/continue", block_body(session_id, 2, b"x"))
    assert "outside this carve's blocks 0..1" in beyond["error"]
    stolen = gateway_post(
        cluster, "/carve/continue", block_body(session_id, 1, b"x" * 1808), other_key
    )
    assert stolen == {"error": f"carve session {session_id} belongs to another node"}
    assert show(cluster, session_id)["blocks_received"] == 0


def test_carves_beyond_the_limits_are_refused_with_the_setting_to_change(
    cluster: QuarryCluster,
) -> None:
    node = new_node(cluster)
    key = asyncio.run(_enroll(node))
    too_big = gateway_post(cluster, "/carve/start", start_body(key, 64 * MIB, 8192 * 64), key)
    assert (
        "exceeds this server's limit of 33554432 bytes (QUARRY_CARVE_MAX_BYTES)"
        in (too_big["error"])
    )
    big_blocks = gateway_post(cluster, "/carve/start", start_body(key, 4 * MIB, 2 * MIB), key)
    assert "QUARRY_CARVE_MAX_BLOCK_BYTES" in big_blocks["error"]
    many_blocks = gateway_post(cluster, "/carve/start", start_body(key, 8 * MIB, 1024), key)
    assert "block_count 8192 exceeds this server's limit of 4096 blocks" in many_blocks["error"]
    inconsistent = gateway_post(
        cluster, "/carve/start", start_body(key, 20_000, 8192, block_count=7), key
    )
    assert "does not match carve_size" in inconsistent["error"]
    assert "session_id" not in too_big and "session_id" not in inconsistent
    # Without a valid node key osquery is told to re-enroll, and no session opens.
    assert gateway_post(cluster, "/carve/start", start_body("bogus", 10, 8192)) == {
        "node_invalid": True
    }
    # The node key may come from the Authorization header alone (osquery 5.23+).
    header_only = start_body("", 10, 8192)
    del header_only["node_key"]
    assert "session_id" in gateway_post(cluster, "/carve/start", header_only, key)


def test_a_start_request_sent_twice_opens_one_session(cluster: QuarryCluster) -> None:
    node = new_node(cluster)
    key = asyncio.run(_enroll(node))
    body = start_body(key, 1000, 8192)
    first = gateway_post(cluster, "/api/v1/osquery/carve/begin", body, key)
    second = gateway_post(cluster, "/api/v1/osquery/carve/begin", body, key)
    assert first == second


# --- quarry carve start ---------------------------------------------------------------


def test_carve_start_launches_the_live_query_and_follows_the_upload(
    cluster: QuarryCluster,
) -> None:
    node = new_node(cluster, carver_block_size=64 * 1024)
    contents = real_tar_archive(512 * 1024)
    asyncio.run(_enroll(node))
    node_id = next(
        n["node_id"]
        for n in cluster.cli_json("nodes", "list")  # type: ignore[union-attr]
        if n["host_identifier"] == node.host_identifier
    )
    command = subprocess.Popen(
        [sys.executable, "-m", "quarry", "carve", "start", node_id, "/etc/hosts", "--json"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        carve_guid = str(uuid.uuid4())
        asked = asyncio.run(_answer_carve_query(node, carve_guid))
        assert asked == "SELECT * FROM carves WHERE path = '/etc/hosts' AND carve = 1"
        assert asyncio.run(carve_with(node, contents, carve_guid)).ok
        stdout, stderr = command.communicate(timeout=120)
    finally:
        command.kill()
    assert command.returncode == 0, stderr
    carve = orjson.loads(stdout)["carve"]
    assert carve["carve_id"] == carve_guid
    assert carve["status"] == "complete"
    assert carve["sha256"] == hashlib.sha256(contents).hexdigest()
    assert "blocks" in stderr and "[" in stderr  # the progress bar


def test_carve_commands_explain_what_they_do(cluster: QuarryCluster) -> None:
    for action in ("start", "list", "show", "get"):
        assert "--json" in cluster.cli("carve", action, "--help").stdout
    missing = cluster.cli("carve", "get", "nope", "-o", "/dev/null", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "quarry carve: NOT_FOUND: no carve 'nope'\n"


# --- the carve commands over gRPC: roles, no state directory, the hash ----------------


def cli_with_token(
    cluster: QuarryCluster, token: str, state_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`quarry ARGS` as token, from a state directory that is not the cluster's (so no
    carve store, no admin token file), finding the services by --port-base alone."""
    env = {**cluster.env(), "QUARRY_ADMIN_TOKEN": token, "QUARRY_STATE_DIR": str(state_dir)}
    command = [sys.executable, "-m", "quarry", "--port-base", str(cluster.port_base), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def token_of_role(cluster: QuarryCluster, name: str, role: str) -> str:
    return cluster.cli_json("token", "create", name, "--role", role)["value"]  # type: ignore[index]


def test_carve_commands_use_the_callers_token_a_reader_may_not_download(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    data = b"a file only operators may take\n" * 500
    node = new_node(cluster)
    result = asyncio.run(carve_with(node, data))
    assert result.ok, node.last_error
    completed(cluster, result.carve_id)
    elsewhere = tmp_path / "not-the-state-dir"  # never made: the commands need none
    reader = token_of_role(cluster, "carve-reader", "read-only")

    listed = cli_with_token(cluster, reader, elsewhere, "carve", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert result.session_id in [c["session_id"] for c in json.loads(listed.stdout)]
    mine = cli_with_token(
        cluster, reader, elsewhere, "carve", "list", "--host", node.host_identifier
    )
    assert mine.returncode == 0 and result.session_id in mine.stdout and "(1 row)" in mine.stdout
    shown = cli_with_token(cluster, reader, elsewhere, "carve", "show", result.carve_id)
    assert shown.returncode == 0, shown.stderr
    assert f"sha256           {hashlib.sha256(data).hexdigest()}" in shown.stdout

    out = tmp_path / "taken.tar"
    refused = cli_with_token(
        cluster, reader, elsewhere, "carve", "get", result.carve_id, "-o", str(out)
    )
    assert refused.returncode == 1
    assert refused.stderr == (
        "quarry carve: PERMISSION_DENIED: token 'carve-reader' (read-only) may not call"
        " DownloadCarve: it needs operator\n"
    ), refused.stderr
    assert not out.exists() and not elsewhere.exists()

    operator = token_of_role(cluster, "carve-operator", "operator")
    got = cli_with_token(
        cluster, operator, elsewhere, "carve", "get", result.carve_id, "-o", str(out), "--json"
    )
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == data and json.loads(got.stdout)["bytes_written"] == len(data)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # a file off a host: private
    nowhere = tmp_path / "no-such-dir" / "taken.tar"
    unwritable = cli_with_token(
        cluster, operator, elsewhere, "carve", "get", result.carve_id, "-o", str(nowhere)
    )
    assert unwritable.returncode == 1
    assert unwritable.stderr == f"quarry carve: cannot write {nowhere}: No such file or directory\n"

    audited = {
        (e["token_name"], e["method"].rsplit("/", 1)[-1], e["outcome"])
        for e in cluster.cli_json("audit", "list", "--since", "15m")  # type: ignore[union-attr]
    }
    assert {
        ("carve-reader", "ListCarves", "OK"),
        ("carve-reader", "GetCarve", "OK"),
        ("carve-reader", "DownloadCarve", "PERMISSION_DENIED"),
        ("carve-operator", "DownloadCarve", "OPENED"),  # a stream is audited as it opens
    } <= audited


def test_a_carve_changed_on_disk_is_not_written_and_the_command_says_why(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: the change is in the last chunk
    node = new_node(cluster, carver_block_size=256 * 1024)
    result = asyncio.run(carve_with(node, data))
    assert result.ok, node.last_error
    completed(cluster, result.carve_id)
    stored = cluster.state_dir / "carves" / f"{result.session_id}.carve"
    with stored.open("r+b") as archive:  # the same size, one byte different
        archive.seek(len(data) - 1)
        archive.write(b"\x00" if data[-1:] != b"\x00" else b"\x01")
        archive.flush()
        os.fsync(archive.fileno())
    out = tmp_path / "changed.tar"
    failed = cluster.cli("carve", "get", result.session_id, "-o", str(out), check=False)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("quarry carve: DATA_LOSS: the stored archive's sha256 is"), last
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


def test_the_cli_keeps_no_archive_whose_size_hash_or_order_is_not_the_record_s() -> None:
    data = b"carved" * 100_000
    carve = distributed_pb2.CarveInfo(
        carve_id="c", carve_size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )

    def chunks(payload: bytes, skip: int = 0) -> list[distributed_pb2.CarveChunk]:
        step = 256 * 1024
        return [
            distributed_pb2.CarveChunk(offset=o + skip, data=payload[o : o + step])
            for o in range(0, len(payload), step)
        ]

    assert receive_verified(carve, chunks(data), io.BytesIO(), decompress=False) == len(data)
    changed = data[:-1] + b"!"
    for wrong, said in (
        (chunks(changed), "sha256"),
        (chunks(data[:-6]), f"received {len(data) - 6} bytes"),
        (chunks(data, skip=1), "came where byte 0 was due"),
    ):
        with pytest.raises(CommandError, match=said):
            receive_verified(carve, wrong, io.BytesIO(), decompress=False)


async def _enroll(node: OsqueryNode) -> str:
    async with node:
        return await node.get_node_key()


async def _answer_carve_query(node: OsqueryNode, carve_guid: str) -> str:
    """Run distributed reads until the carves-table query arrives; answer it like osquery."""
    asked: list[str] = []
    tables = TableExecutor(node.profile)

    def execute(sql: str) -> QueryOutcome:
        if "FROM carves" not in sql:
            return tables(sql)
        asked.append(sql)
        row = {
            "time": "1736072430",
            "sha256": "",
            "size": "-1",
            "path": "/etc/hosts",
            "status": "SCHEDULED",
            "carve_guid": carve_guid,
            "request_id": str(uuid.uuid4()),
            "carve": "1",
        }
        return QueryOutcome(rows=[row])

    async with node:
        for _ in range(300):
            round_ = await node.run_distributed_once(execute)
            if asked and round_.written:
                return asked[0]
            await asyncio.sleep(0.2)
    raise AssertionError("the carve query never reached the node")


# --- expiry ---------------------------------------------------------------------------


def test_a_carve_not_finished_in_time_expires_and_its_data_is_dropped(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = {"QUARRY_CARVE_EXPIRY_HOURS": "0.0005"}  # 1.8 seconds
    with quarry_cluster(tmp_path_factory.mktemp("expiry"), extra_env=env) as short_lived:
        node = new_node(short_lived)
        key = asyncio.run(_enroll(node))
        begin = gateway_post(short_lived, "/carve/start", start_body(key, 20_000, 8192), key)
        assert "session_id" in begin, begin
        session_id = begin["session_id"]
        first = gateway_post(short_lived, "/carve/continue", block_body(session_id, 0, b"a" * 8192))
        assert first == {"blocks_received": 1, "block_count": 3}
        data_file = short_lived.state_dir / "carves" / f"{session_id}.carve"
        assert data_file.exists()

        def late_block() -> dict:
            answer = gateway_post(
                short_lived, "/carve/continue", block_body(session_id, 1, b"b" * 8192)
            )
            return answer if "error" in answer else {}

        assert eventually(late_block) == {"error": f"carve session {session_id} expired"}
        assert not data_file.exists()
        assert show(short_lived, session_id)["status"] == "expired"
        assert short_lived.cli("carve", "get", session_id, "-o", "/dev/null", check=False).stderr
