"""`quarry carve start|list|show|get`: pull files from hosts with osquery's carver.

`start` launches a live query on the `carves` table for one node (DistributedService
StartQuery), reads the carve id from the node's answer, then follows the upload. The
other commands read the carve index straight from the state directory the gateway
writes (state_dir/carves, or QUARRY_CARVE_DIR), so they run on the gateway's machine or
anywhere that directory is mounted (docs/carving.md).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from protos.v1 import distributed_pb2, distributed_pb2_grpc
from quarry.cli.commands.admin import CommandError, call_rpc
from quarry.cli.commands.node_names import NODE_NAME_HELP, resolve_node
from quarry.cli.commands.queries import follow, result_rows
from quarry.runtime.command_output import emit_json, emit_table, progress, utc_iso
from quarry.runtime.settings import Settings
from quarry.serving.grpc_runtime import sync_channel
from quarry.state.carve_store import COMPLETE, RECEIVING, Carve, CarveStore
from quarry.state.directory import carve_dir

COPY_CHUNK_BYTES = 1024 * 1024
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
    admin(carve_sub, "list", "carves, newest first, with their progress", carve_list)
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


def _follow_upload(settings: Settings, carve_id: str, deadline: float) -> Carve:
    """Show the upload's progress until the carve completes, expires or time is up.

    Until osquery's start request arrives (at the next minute) there is no carve to show,
    and on a fresh install no carve store yet (the gateway makes it then): a waiting line,
    rewritten in place on a terminal, counts the seconds.
    """
    started = time.monotonic()
    carve, store, shown_wait = None, None, -WAIT_LINE_EVERY_S
    while time.monotonic() < deadline:
        store = store or _existing_store(settings)
        carve = store.find(carve_id) if store else None
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


def progress_bar(carve: Carve) -> str:
    share = carve.blocks_received / carve.block_count if carve.block_count else 1.0
    filled = round(share * BAR_WIDTH)
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {carve.blocks_received}/"
        f"{carve.block_count} blocks, {_size(carve.bytes_received)} of"
        f" {_size(carve.carve_size)} {carve.status}"
    )


def _print_started(args: argparse.Namespace, campaign_id: str, carve: Carve | None) -> None:
    if args.json:
        emit_json({"campaign_id": campaign_id, "carve": carve.to_json() if carve else None})
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
    store = _existing_store(settings)  # none yet: no carve was ever started
    carves = store.list() if store else []
    if args.json:
        emit_json([carve.to_json() for carve in carves])
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
                utc_iso(int(carve.started_at)),
            )
            for carve in carves
        ],
    )
    return 0


def carve_show(settings: Settings, args: argparse.Namespace) -> int:
    carve = _find(_open_store(settings), args.id)
    if args.json:
        emit_json(carve.to_json())
        return 0
    for name, value in carve.to_json().items():
        print(f"{name:16} {value}")
    return 0


# --- get ------------------------------------------------------------------------------


def carve_get(settings: Settings, args: argparse.Namespace) -> int:
    store = _open_store(settings)
    carve = _find(store, args.id)
    if carve.status != COMPLETE:
        raise CommandError(
            f"carve {args.id} is {carve.status} ({carve.blocks_received}/{carve.block_count}"
            " blocks); only a complete carve can be read"
        )
    decompress = args.decompress and carve.compression == "zstd"
    if args.decompress and not decompress:
        progress(f"carve {carve.carve_id} is not compressed; writing it as it is")
    source = store.data_path(carve.session_id)
    if args.output == "-":
        written = _copy_verified(source, carve, sys.stdout.buffer, decompress)
    else:
        with open(args.output, "wb") as output:
            written = _copy_verified(source, carve, output, decompress)
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


class _CountingWriter:
    """Counts the bytes that reach the output (after decompression, if any)."""

    def __init__(self, output: BinaryIO) -> None:
        self.output, self.count = output, 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.output.write(data)

    def flush(self) -> None:
        self.output.flush()


def _copy_verified(source: Path, carve: Carve, output: BinaryIO, decompress: bool) -> int:
    """Copy (and maybe decompress) the archive, checking its sha256 against the index."""
    digest = hashlib.sha256()
    counted = _CountingWriter(output)
    writer = _zstd_writer(counted) if decompress else counted
    shown = -1
    with source.open("rb") as archive:
        while chunk := archive.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            percent = archive.tell() * 100 // max(1, carve.carve_size)
            if percent // 10 != shown // 10:  # a line per 10% when not on a terminal
                shown = percent
                progress(f"{percent}% of {_size(carve.carve_size)} read")
    writer.flush()
    if digest.hexdigest() != carve.sha256:
        raise CommandError(
            f"the stored archive's sha256 is {digest.hexdigest()}, not {carve.sha256}:"
            " it changed on disk after the carve completed"
        )
    return counted.count


def _zstd_writer(output: _CountingWriter):
    import zstandard  # only needed to decompress

    return zstandard.ZstdDecompressor().stream_writer(output, closefd=False)


# --- shared ---------------------------------------------------------------------------


def _open_store(settings: Settings) -> CarveStore:
    store = _existing_store(settings)
    if store is None:
        raise CommandError(
            f"no carves at {carve_dir(settings)}: none was started yet, or this is not where"
            " the gateway's state directory is (QUARRY_STATE_DIR or QUARRY_CARVE_DIR)"
        )
    return store


def _existing_store(settings: Settings) -> CarveStore | None:
    """The carve store, unless the gateway has not made it yet (reading never makes it)."""
    directory = carve_dir(settings)
    if not (directory / "index.sqlite3").exists():
        return None
    return CarveStore(directory)


def _find(store: CarveStore, carve_or_session_id: str) -> Carve:
    carve = store.find(carve_or_session_id)
    if carve is None:
        raise CommandError(f"no carve {carve_or_session_id}")
    return carve


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
