"""`quarry carve start|list|show|get`: pull files from hosts with osquery's carver.

`start` launches a live query on the `carves` table for one node (DistributedService
StartQuery), reads the carve id from the node's answer, then follows the upload. Every
command reads carves through the distributed service (ListCarves, GetCarve,
DownloadCarve; docs/adr/0018-carves-read-through-the-distributed-service.md) with the
caller's token, so roles and the audit log apply as to every admin command, and the CLI
needs no access to the gateways' carve directory (docs/carving.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.cli.commands.admin import RPC_TIMEOUT_S, CommandError, call_rpc, rpc_error_line
from quarry.cli.commands.node_names import NODE_NAME_HELP, resolve_node
from quarry.cli.commands.queries import follow, result_rows
from quarry.runtime.command_output import (
    emit_json,
    emit_table,
    progress,
    proto_to_json,
    utc_iso,
)
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.carve_store import COMPLETE, EXPIRED, RECEIVING

CarveInfo = distributed_pb2.CarveInfo
CARVE_STATUSES = (RECEIVING, COMPLETE, EXPIRED)
POLL_INTERVAL_S = 0.5
WAIT_LINE_EVERY_S = 10.0  # off a terminal, a waiting line this often (on one, each poll)
BAR_WIDTH = 30


def add_carve_commands(sub: argparse._SubParsersAction, admin: Callable) -> None:
    carve = sub.add_parser("carve", help="file carves: pull files from hosts")
    carve_sub = carve.add_subparsers(dest="carve_command", required=True, metavar="ACTION")
    cmd = admin(carve_sub, "start", "carve PATH from NODE and follow the upload", carve_start)
    cmd.add_argument("node", help=f"the node: {NODE_NAME_HELP} (see `quarry node list`)")
    # argparse formats help text with %: a literal one is written %%.
    cmd.add_argument("path", help="file path on the host; %% and _ make it a LIKE pattern")
    cmd.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the node's answer and the upload, with progress on stderr"
        " (osquery starts a carve at the next minute; default 900)",
    )
    cmd.add_argument(
        "--no-wait", action="store_true", help="print the live query id and return at once"
    )
    cmd = admin(carve_sub, "list", "carves, newest first, with their progress", carve_list)
    cmd.add_argument("--status", choices=CARVE_STATUSES, help="only carves in this state")
    cmd.add_argument("--host", help="only this host identifier's carves")
    cmd = admin(carve_sub, "show", "one carve (by session id or osquery carve id)", carve_show)
    cmd.add_argument("id")
    cmd = admin(carve_sub, "get", "write a complete carve's archive to a file", carve_get)
    cmd.add_argument("id", help="session id or osquery carve id")
    cmd.add_argument("-o", "--output", required=True, help="file to write ('-': stdout)")
    cmd.add_argument(
        "--decompress",
        action="store_true",
        help="write the tar inside a zstd carve (osquery --carver_compression)",
    )


def carves_sql(path: str) -> str:
    """The carves-table query that makes osquery carve `path` (§10.1)."""
    literal = "'" + path.replace("'", "''") + "'"
    operator = "LIKE" if "%" in path or "_" in path else "="
    return f"SELECT * FROM carves WHERE path {operator} {literal} AND carve = 1"


# --- start ----------------------------------------------------------------------------


def carve_start(settings: Settings, args: argparse.Namespace) -> int:
    stub = _stub(settings)
    node_id = resolve_node(settings, args.node).node_id
    campaign = call_rpc(
        stub.StartQuery,
        distributed_pb2.StartQueryRequest(
            sql=carves_sql(args.path), node_ids=[node_id], author="quarry carve"
        ),
    )
    if campaign.targeted == 0:
        raise CommandError(f"no node {args.node} to carve from")
    progress(f"live query {campaign.campaign_id} asks {args.node} to carve {args.path}")
    if args.no_wait:
        _print_started(args, campaign.campaign_id, None)
        return 0
    deadline = time.monotonic() + args.timeout
    carve_id = _carve_id_from_answer(settings, campaign.campaign_id, deadline)
    progress(f"the host scheduled carve {carve_id}; osquery uploads it on the next minute")
    carve = _follow_upload(settings, carve_id, deadline)
    _print_started(args, campaign.campaign_id, carve)
    if carve.status != COMPLETE:
        raise CommandError(f"carve {carve_id} is {carve.status}, not complete")
    return 0


def _carve_id_from_answer(settings: Settings, campaign_id: str, deadline: float) -> str:
    """The carve_guid in the node's answer to the carves-table query."""
    remaining = max(1.0, deadline - time.monotonic())
    for update in follow(_stub(settings), campaign_id, remaining, hosts=False):
        if update.counts["answered"] or update.counts["failed"]:
            break
    rows = result_rows(settings, campaign_id)
    carve_ids = [row.get("carve_guid", "") for row in rows if row.get("carve") == "1"]
    if not carve_ids or not carve_ids[0]:
        raise CommandError(
            f"the node did not schedule a carve (no carves row in live query {campaign_id}):"
            " is the path a readable file, and the node run with --disable_carver=false?"
        )
    return carve_ids[0]


def _follow_upload(settings: Settings, carve_id: str, deadline: float) -> CarveInfo:
    """Show the upload's progress until the carve completes, expires or time is up.

    Until osquery's start request arrives (at the next minute) the distributed service
    knows no such carve (on a fresh install, no carve store at all: the gateway makes it
    then): a waiting line, rewritten in place on a terminal, counts the seconds.
    """
    stub = _stub(settings)
    started = time.monotonic()
    carve, shown_wait = None, -WAIT_LINE_EVERY_S
    while time.monotonic() < deadline:
        carve = _carve_if_known(stub, carve_id)
        if carve is not None:
            progress(progress_bar(carve))
            if carve.status != RECEIVING:
                break
        else:
            waited = time.monotonic() - started
            if sys.stderr.isatty() or waited - shown_wait >= WAIT_LINE_EVERY_S:
                shown_wait = waited
                progress(
                    f"waiting for the host to start uploading carve {carve_id}:"
                    f" {waited:.0f} s of {deadline - started:.0f} s (--timeout)"
                )
        time.sleep(POLL_INTERVAL_S)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    if carve is None:
        raise CommandError(
            f"carve {carve_id} did not start uploading within --timeout: osquery starts it at"
            " the next minute; is the node still online? Follow it with `quarry carve list`"
        )
    return carve


def _carve_if_known(
    stub: distributed_pb2_grpc.DistributedServiceStub, carve_id: str
) -> CarveInfo | None:
    """The carve's record, or None while the service knows no such carve (NOT_FOUND)."""
    try:
        return stub.GetCarve(distributed_pb2.GetCarveRequest(carve=carve_id), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise CommandError(rpc_error_line(exc)) from exc


def progress_bar(carve: CarveInfo) -> str:
    share = carve.blocks_received / carve.block_count if carve.block_count else 1.0
    filled = round(share * BAR_WIDTH)
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {carve.blocks_received}/"
        f"{carve.block_count} blocks, {_size(carve.bytes_received)} of"
        f" {_size(carve.carve_size)} {carve.status}"
    )


def _print_started(args: argparse.Namespace, campaign_id: str, carve: CarveInfo | None) -> None:
    if args.json:
        emit_json({"campaign_id": campaign_id, "carve": carve})
        return
    if carve is None:
        print(f"live query {campaign_id} started; follow with `quarry carve list`")
        return
    print(
        f"carve {carve.carve_id} ({carve.status}): {_size(carve.carve_size)}"
        f" sha256 {carve.sha256 or '-'}\nsession {carve.session_id};"
        f" get it with `quarry carve get {carve.session_id} -o FILE`"
    )


# --- list and show --------------------------------------------------------------------


def carve_list(settings: Settings, args: argparse.Namespace) -> int:
    request = distributed_pb2.ListCarvesRequest(
        status=args.status or "", host_identifier=args.host or ""
    )
    carves = list(call_rpc(_stub(settings).ListCarves, request).carves)
    if args.json:
        emit_json(carves)
        return 0
    emit_table(
        ("session", "carve_id", "host", "status", "blocks", "size", "sha256", "started"),
        [
            (
                carve.session_id,
                carve.carve_id,
                carve.host_identifier or carve.node_id,
                carve.status + (" zstd" if carve.compression else ""),
                f"{carve.blocks_received}/{carve.block_count}",
                _size(carve.carve_size),
                carve.sha256 or "-",
                utc_iso(carve.started_at),
            )
            for carve in carves
        ],
    )
    return 0


def carve_show(settings: Settings, args: argparse.Namespace) -> int:
    request = distributed_pb2.GetCarveRequest(carve=args.id)
    carve = call_rpc(_stub(settings).GetCarve, request)
    if args.json:
        emit_json(carve)
        return 0
    for name, value in proto_to_json(carve).items():
        print(f"{name:16} {value}")
    return 0


# --- get ------------------------------------------------------------------------------


def carve_get(settings: Settings, args: argparse.Namespace) -> int:
    chunks = download_chunks(_stub(settings), args.id)
    # The first chunk carries the carve's record; a refusal (role, unknown or incomplete
    # carve) comes before it, so then no output file is made.
    first = next(chunks, None)
    if first is None:
        raise CommandError(f"the distributed service sent no part of carve {args.id}")
    carve = first.carve
    decompress = args.decompress and carve.compression == "zstd"
    if args.decompress and not decompress:
        progress(f"carve {carve.carve_id} is not compressed; writing it as it is")
    try:
        with verified_output(args.output) as output:
            written = receive_verified(carve, itertools.chain([first], chunks), output, decompress)
    except BrokenPipeError:
        raise  # `-o - | head`: quarry/cli/main.py ends the command quietly
    except OSError as exc:  # no such directory, no permission, disk full...
        raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    summary = {
        "session_id": carve.session_id,
        "carve_id": carve.carve_id,
        "output": args.output,
        "bytes_written": written,
        "sha256": carve.sha256,
        "decompressed": decompress,
    }
    if args.json and args.output != "-":
        emit_json(summary)
    else:
        progress(f"wrote {_size(written)} to {args.output}; archive sha256 {carve.sha256} verified")
    return 0


def download_chunks(
    stub: distributed_pb2_grpc.DistributedServiceStub, carve_id: str
) -> Iterator[distributed_pb2.CarveChunk]:
    """DownloadCarve's chunks; a refusal or a broken stream is a one-line CommandError.

    No deadline: a large carve takes as long as it takes, and the channel's keepalive
    notices a dead connection."""
    call = stub.DownloadCarve(distributed_pb2.GetCarveRequest(carve=carve_id))
    try:
        yield from call
    except grpc.RpcError as exc:
        raise CommandError(rpc_error_line(exc)) from exc
    finally:
        call.cancel()  # nothing once the stream ended; frees it when the command stops early


@contextlib.contextmanager
def verified_output(path: str) -> Iterator[BinaryIO]:
    """Where the archive goes: stdout for '-', a device or pipe as it is; a file is written
    beside its name (private, 0600) and renamed over it only once the download is whole and
    its hash checked, so a failed one leaves neither a partial nor a wrong file."""
    target = Path(path)
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if target.exists() and not target.is_file():
        with target.open("wb") as output:
            yield output
        return
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as output:
            yield output
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


class _CountingWriter:
    """Counts the bytes that reach the output (after decompression, if any)."""

    def __init__(self, output: BinaryIO) -> None:
        self.output, self.count = output, 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.output.write(data)

    def flush(self) -> None:
        self.output.flush()


def receive_verified(
    carve: CarveInfo,
    chunks: Iterable[distributed_pb2.CarveChunk],
    output: BinaryIO,
    decompress: bool,
) -> int:
    """Write (and maybe decompress) the chunks in order, showing bytes of the total, and
    check the archive's size and SHA-256 against the carve's record; the bytes written.

    The service checks the hash as it reads the file too (a changed file fails the stream
    with DATA_LOSS); this check covers what reached this machine."""
    digest = hashlib.sha256()
    counted = _CountingWriter(output)
    writer = _zstd_writer(counted) if decompress else counted
    received, shown = 0, -1
    for chunk in chunks:
        if chunk.offset != received:
            raise CommandError(
                f"carve {carve.carve_id}: a chunk at byte {chunk.offset} came where byte"
                f" {received} was due; download it again"
            )
        digest.update(chunk.data)
        writer.write(chunk.data)
        received += len(chunk.data)
        shown = _show_download(carve, received, shown)
    writer.flush()
    if received != carve.carve_size or digest.hexdigest() != carve.sha256:
        raise CommandError(
            f"carve {carve.carve_id}: received {received} bytes with sha256"
            f" {digest.hexdigest()}, not the carve's {carve.carve_size} bytes with sha256"
            f" {carve.sha256}; nothing was kept, download it again"
        )
    return counted.count


def _show_download(carve: CarveInfo, received: int, shown: int) -> int:
    """A progress line per chunk on a terminal, per 10% off one; the percent shown."""
    percent = received * 100 // max(1, carve.carve_size)
    if sys.stderr.isatty() or percent // 10 != shown // 10:
        progress(
            f"carve {carve.carve_id}: {_size(received)} of {_size(carve.carve_size)}"
            f" received ({percent}%)"
        )
        return percent
    return shown


def _zstd_writer(output: _CountingWriter):
    import zstandard  # only needed to decompress

    return zstandard.ZstdDecompressor().stream_writer(output, closefd=False)


# --- shared ---------------------------------------------------------------------------


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    scaled = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "GiB":
            break
    return f"{scaled:.1f} {unit}"


def _stub(settings: Settings) -> distributed_pb2_grpc.DistributedServiceStub:
    return distributed_pb2_grpc.DistributedServiceStub(
        sync_channel(settings.service_addr("distributed"))
    )
