"""osquery's carve requests applied to the carve store (docs/osquery-protocol.md §10).

A start request (authenticated by node key) opens a session within the limits and
answers its `session_id`; continue requests carry only that session id, one base64
block each. Disk work runs in threads so the event loop keeps answering check-ins.
Hashing a finished carve runs in the background, so the last block is answered at once
(osquery gives a request 16 s); a periodic sweep expires late carves and completes any
whose hashing was interrupted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import secrets
import shutil
import time

from prometheus_client import Counter, Gauge, Histogram

from gateway.carving.limits import CarveLimits, carve_limits
from gateway.node_cache import NodeIdentity
from quarry.runtime.settings import Settings
from quarry.state.carve_store import RECEIVING, Carve, CarveRejected, CarveStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 60.0

SESSIONS = Counter(
    "quarry_gateway_carve_sessions_total",
    "Carve sessions by outcome: started, resumed (a re-sent start), refused (limits or bad "
    "request), completed, expired.",
    ["outcome"],
)
BLOCKS = Counter(
    "quarry_gateway_carve_blocks_total",
    "Carve blocks by outcome: stored, duplicate (already stored), refused.",
    ["outcome"],
)
BLOCK_BYTES = Counter(
    "quarry_gateway_carve_block_bytes_total", "Carve bytes stored (duplicates not counted)."
)
BLOCK_SECONDS = Histogram(
    "quarry_gateway_carve_block_write_duration_seconds",
    "Time to store one carve block durably (write, fsync, index).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
OPEN_SESSIONS = Gauge(
    "quarry_gateway_carve_sessions_open",
    "Carve sessions still receiving blocks (from the shared index, at the last sweep).",
    multiprocess_mode="max",
)
for _outcome in ("started", "resumed", "refused", "completed", "expired"):
    SESSIONS.labels(_outcome)
for _outcome in ("stored", "duplicate", "refused"):
    BLOCKS.labels(_outcome)


class Carving:
    """This worker's view of the shared carve store."""

    def __init__(self, limits: CarveLimits) -> None:
        self.limits = limits
        self.store = CarveStore(limits.directory)
        self._last_sweep = 0.0
        self._background: set[asyncio.Task] = set()

    async def begin(self, node: NodeIdentity, body: dict) -> Carve:
        """Open a session for a start request (or find the one a re-sent start opened)."""
        await self._sweep_now_and_then()
        try:
            return await asyncio.to_thread(self._begin, node, body)
        except CarveRejected:
            SESSIONS.labels("refused").inc()
            raise

    async def receive_block(self, body: dict, sender: NodeIdentity | None) -> Carve:
        """Store one continue request's block; `sender` is the node of its Authorization."""
        await self._sweep_now_and_then()
        started = time.perf_counter()
        try:
            session_id, block_id, data = _parse_block(body)
            outcome = await asyncio.to_thread(
                self.store.put_block,
                session_id,
                block_id,
                data,
                self.limits.expiry_s,
                sender.node_id if sender else "",
            )
        except CarveRejected:
            BLOCKS.labels("refused").inc()
            raise
        BLOCK_SECONDS.observe(time.perf_counter() - started)
        carve = outcome.carve
        if outcome.duplicate:
            BLOCKS.labels("duplicate").inc()
        else:
            BLOCKS.labels("stored").inc()
            BLOCK_BYTES.inc(len(data))
        if carve.status == RECEIVING and carve.all_blocks_in:
            self._in_background(self._complete(carve.session_id))
        return carve

    async def close(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)
        self.store.close()

    # --- start ------------------------------------------------------------------------

    def _begin(self, node: NodeIdentity, body: dict) -> Carve:
        request = _parse_start(body)
        existing = self.store.find_open(node.node_id, request["request_id"])
        if existing is not None and existing.carve_id == request["carve_id"]:
            SESSIONS.labels("resumed").inc()
            return existing
        self._check_limits(request["block_count"], request["block_size"], request["carve_size"])
        now = time.time()
        carve = self.store.create(
            Carve(
                session_id=secrets.token_hex(16),  # the only credential of continue requests
                carve_id=request["carve_id"],
                request_id=request["request_id"],
                node_id=node.node_id,
                host_identifier=node.host_identifier,
                block_count=request["block_count"],
                block_size=request["block_size"],
                carve_size=request["carve_size"],
                blocks_received=0,
                bytes_received=0,
                status=RECEIVING,
                sha256="",
                compression="",
                started_at=now,
                updated_at=now,
                completed_at=0.0,
            )
        )
        SESSIONS.labels("started").inc()
        log.info(
            "carve %s from %s: %d bytes in %d blocks, session %s",
            carve.carve_id,
            node.host_identifier or node.node_id,
            carve.carve_size,
            carve.block_count,
            carve.session_id,
        )
        return carve

    def _check_limits(self, block_count: int, block_size: int, carve_size: int) -> None:
        limits = self.limits
        if carve_size > limits.max_carve_bytes:
            raise CarveRejected(
                f"carve of {carve_size} bytes exceeds this server's limit of"
                f" {limits.max_carve_bytes} bytes (QUARRY_CARVE_MAX_BYTES)",
                413,
            )
        if block_size > limits.max_block_bytes:
            raise CarveRejected(
                f"block_size {block_size} exceeds this server's limit of"
                f" {limits.max_block_bytes} bytes (QUARRY_CARVE_MAX_BLOCK_BYTES)",
                413,
            )
        if block_count > limits.max_block_count:
            raise CarveRejected(
                f"block_count {block_count} exceeds this server's limit of"
                f" {limits.max_block_count} blocks (QUARRY_CARVE_MAX_BLOCKS)",
                413,
            )
        free = shutil.disk_usage(self.store.directory).free
        if free - carve_size < limits.min_free_bytes:
            raise CarveRejected(
                f"not enough disk for a carve of {carve_size} bytes ({free} bytes free,"
                f" {limits.min_free_bytes} kept free: QUARRY_CARVE_MIN_FREE_BYTES)",
                507,
            )

    # --- completion and expiry --------------------------------------------------------

    async def _complete(self, session_id: str) -> None:
        carve = await asyncio.to_thread(self.store.complete, session_id)
        if carve is not None and carve.status == "complete" and carve.completed_at:
            SESSIONS.labels("completed").inc()
            log.info("carve %s complete: sha256 %s", carve.carve_id, carve.sha256)

    async def _sweep_now_and_then(self) -> None:
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = time.monotonic()
        self._in_background(self._sweep())

    async def _sweep(self) -> None:
        expired, unfinished = await asyncio.to_thread(
            self.store.sweep, self.limits.expiry_s, self.limits.retention_s
        )
        for carve in expired:
            SESSIONS.labels("expired").inc()
            log.info(
                "carve %s expired with %d of %d blocks",
                carve.carve_id,
                carve.blocks_received,
                carve.block_count,
            )
        for carve in unfinished:
            await self._complete(carve.session_id)
        OPEN_SESSIONS.set(await asyncio.to_thread(self.store.count_open))

    def _in_background(self, work) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("carve background work failed", exc_info=task.exception())


# --- request bodies -------------------------------------------------------------------


def _parse_start(body: dict) -> dict:
    """The start request's fields, checked: osquery sends unsigned integers and ids."""
    fields = {name: _count(body, name) for name in ("block_count", "block_size", "carve_size")}
    for name in ("carve_id", "request_id"):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise CarveRejected(f"{name} must be a non-empty string")
        fields[name] = value
    if fields["block_size"] == 0:
        raise CarveRejected("block_size must be positive")
    expected_blocks = math.ceil(fields["carve_size"] / fields["block_size"])
    if fields["block_count"] != expected_blocks:
        raise CarveRejected(
            f"block_count {fields['block_count']} does not match carve_size"
            f" {fields['carve_size']} in blocks of {fields['block_size']} ({expected_blocks})"
        )
    return fields


def _parse_block(body: dict) -> tuple[str, int, bytes]:
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise CarveRejected("session_id must be a non-empty string")
    block_id = _count(body, "block_id")
    data = body.get("data")
    if not isinstance(data, str):
        raise CarveRejected("data must be a base64 string")
    try:
        return session_id, block_id, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CarveRejected(f"data is not valid base64: {exc}") from exc


def _count(body: dict, name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CarveRejected(f"{name} must be a non-negative integer, not {value!r}")
    return value


_carving: dict[int, Carving] = {}


def carving_for(settings: Settings) -> Carving:
    """This process's Carving for these settings, opened on first use."""
    if id(settings) not in _carving:
        _carving[id(settings)] = Carving(carve_limits(settings))
    return _carving[id(settings)]
