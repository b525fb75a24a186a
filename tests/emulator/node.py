"""`OsqueryNode`: one emulated osqueryd speaking osquery's TLS remote protocol.

Each method is one of osqueryd's remote calls with its real retry behaviour (spec §3-§5,
§7, §9, §10): `get_node_key` enrolls when no key is cached, `fetch_config`,
`send_logs`, `distributed_read`/`distributed_write`/`run_distributed_once`, and `carve`.
Every plugin has its own keep-alive connection, as osquery's plugin threads do. Retry
sleeps are multiplied by `retry_time_scale`, so tests run osquery's logic without waiting
osquery's seconds; the requested (unscaled) sleeps are kept in `retry_sleeps`.

`LogBuffer` is the TLS logger's forwarder: it buffers result and status lines and flushes
them in osquery's batches with osquery's backoff.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import math
import ssl
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.emulator.host_profile import HostProfile
from tests.emulator.http_client import (
    DEFAULT_TIMEOUT_S,
    RESENDABLE_ERRORS,
    HttpConnection,
    HttpCounters,
    HttpResponse,
    ServerAddress,
    osquery_headers,
    osquery_ssl_context,
)
from tests.emulator.response import Verdict, judge_response, parse_body
from tests.emulator.tables import QueryOutcome, TableExecutor

ACCELERATED_INTERVAL_S = 5  # kDistributedAccelerationInterval
MAX_LOG_LINE_BYTES = 1024 * 1024  # --logger_tls_max_linesize

Executor = Callable[[str], QueryOutcome]
LogRecord = Mapping[str, Any] | bytes  # bytes: one compact JSON object, sent verbatim


@dataclass(frozen=True)
class Endpoints:
    """The request paths of each plugin (osquery's `--*_endpoint` flags)."""

    enroll: str
    config: str
    logger: str
    distributed_read: str
    distributed_write: str
    carve_start: str
    carve_continue: str


FLEET_ENDPOINTS = Endpoints(
    enroll="/api/v1/osquery/enroll",
    config="/api/v1/osquery/config",
    logger="/api/v1/osquery/log",
    distributed_read="/api/v1/osquery/distributed/read",
    distributed_write="/api/v1/osquery/distributed/write",
    carve_start="/api/v1/osquery/carve/begin",
    carve_continue="/api/v1/osquery/carve/block",
)
OSQUERY_DOC_ENDPOINTS = Endpoints(
    enroll="/enroll",
    config="/config",
    logger="/logger",
    distributed_read="/distributed/read",
    distributed_write="/distributed/write",
    carve_start="/carve/start",
    carve_continue="/carve/continue",
)


@dataclass(frozen=True)
class QueryResult:
    """One distributed query's outcome, as serialized into a distributed write."""

    rows: list[dict[str, str]]
    status: int  # 0 success, 1 any failure: osquery never sends other codes
    message: str = ""
    stats: dict[str, int] = field(
        default_factory=lambda: {"wall_time_ms": 0, "user_time": 0, "system_time": 0, "memory": 0}
    )


@dataclass(frozen=True)
class DistributedWork:
    """A successful distributed read's answer (values as the server sent them)."""

    queries: dict[str, Any]
    discovery: dict[str, Any]
    accelerate: Any  # honoured only when a JSON integer


@dataclass(frozen=True)
class DistributedRound:
    """What one `run_distributed_once` did."""

    work: DistributedWork | None  # None when the read failed
    results: dict[str, QueryResult]  # this round's results, in execution order
    written: bool | None  # None when there was nothing to write
    rejected: str = ""  # why the read was rejected after it succeeded, e.g. a discovery error


@dataclass(frozen=True)
class CarveResult:
    carve_id: str
    request_id: str
    session_id: str  # "" when the start request failed
    ok: bool


@dataclass(kw_only=True)
class OsqueryNode:
    """One emulated osqueryd. Use `async with OsqueryNode(...) as node:` to close its sockets."""

    server: str  # osquery's --tls_hostname: "host:port", optionally with a path prefix
    ca_file: str | Path | None = None  # --tls_server_certs; or pass ssl_context
    enroll_secret: str = ""
    profile: HostProfile = field(default_factory=HostProfile.make)
    host_identifier: str = ""  # "" means the profile's hostname (--host_identifier=hostname)
    version: str = "5.23.1"
    endpoints: Endpoints = FLEET_ENDPOINTS
    node_key: str = ""  # the cached key (osquery keeps it in RocksDB); "" means enroll first
    tls_enroll_override: str = "enroll_secret"
    tls_secret_always: bool = False
    logger_tls_compress: bool = False
    accept_gzip: bool = False  # --tls_accept_gzip (5.21+)
    disable_reenrollment: bool = False
    enroll_max_attempts: int = 12
    enroll_max_interval_s: int = 600
    config_max_attempts: int = 3
    distributed_max_attempts: int = 3
    distributed_interval_s: int = 60
    carver_block_size: int = 8192
    retry_time_scale: float = 1.0  # multiplies every retry/backoff sleep; 1.0 is osquery's timing
    timeout_s: float = DEFAULT_TIMEOUT_S
    ssl_context: ssl.SSLContext | None = None  # share one context across many nodes
    client_cert: str | Path | None = None
    client_key: str | Path | None = None
    counters: HttpCounters = field(default_factory=HttpCounters)
    clock: Callable[[], float] = time.time

    # State the node builds up, readable by tests.
    config: dict[str, Any] | None = field(default=None, init=False)
    config_text: str = field(default="", init=False)  # the re-serialized config source
    config_hash: str = field(default="", init=False)  # SHA-1 of config_text
    enrollments: int = field(default=0, init=False)  # successful enrollments
    accelerated_until: float = field(default=0.0, init=False)
    unsent_results: dict[str, QueryResult] = field(default_factory=dict, init=False)
    retry_sleeps: list[float] = field(default_factory=list, init=False)
    last_error: str = field(default="", init=False)
    # The server's last enroll answer as parsed; osquery reads only node_key from it, but
    # tests read the reason a server gives next to node_invalid.
    last_enroll_answer: dict[str, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.address = ServerAddress.parse(self.server)
        self.host_identifier = self.host_identifier or self.profile.hostname
        self.profile.osquery_version = self.version
        self._connections: dict[str, HttpConnection] = {}
        self._enroll_lock = asyncio.Lock()

    async def __aenter__(self) -> OsqueryNode:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    @property
    def open_connections(self) -> int:
        """Keep-alive connections this node holds open (one per plugin that has called)."""
        return sum(connection.is_open for connection in self._connections.values())

    def close_connection(self, plugin: str) -> None:
        """Close one plugin's keep-alive connection; its next request opens a new one."""
        connection = self._connections.pop(plugin, None)
        if connection is not None:
            connection.close()

    # -- enrollment (§4) -----------------------------------------------------------------

    async def get_node_key(self) -> str:
        """The cached key, or a full enrollment sequence's result ("" if it failed)."""
        if self.node_key:
            return self.node_key
        async with self._enroll_lock:  # osquery's node_key_mutex: one enrollment at a time
            if not self.node_key:
                key = await self._enroll_with_backoff()
                if key:
                    self.node_key = key
                    self.enrollments += 1
        return self.node_key

    async def enroll(self) -> str:
        """Forget the key and enroll again, like `--enroll_always` at start-up."""
        self.node_key = ""
        return await self.get_node_key()

    async def _enroll_with_backoff(self) -> str:
        attempt, step = 1, 1
        while self.enroll_max_attempts == 0 or attempt <= self.enroll_max_attempts:
            key = await self._request_node_key()
            if key or attempt == self.enroll_max_attempts:
                return key
            if self.enroll_max_attempts > 0:
                attempt += 1
            interval = min(step * step, self.enroll_max_interval_s)
            if interval < self.enroll_max_interval_s:
                step += 1
            await self._sleep(interval)
        return ""

    async def _request_node_key(self) -> str:
        body = {
            self.tls_enroll_override: self.enroll_secret,
            "host_identifier": self.host_identifier,
            "platform_type": self.profile.platform_type,
            "host_details": self.profile.host_details(),
        }
        # Enroll uses a bare request: never an Authorization header.
        response = await self._post("enroll", self.endpoints.enroll, orjson.dumps(body), "")
        if response is None:
            return ""
        document, reason = parse_body(self._decoded_body(response))
        self.last_enroll_answer = document
        key = _node_key_from(document)
        if not key:
            self.last_error = reason or "No node key returned from TLS enroll plugin"
        return key

    # -- config (§5) ---------------------------------------------------------------------

    async def fetch_config(self) -> dict[str, Any] | None:
        """Fetch the config with 3 attempts; return it, or None (the old config stays)."""
        verdict = await self._go_with_retries(
            "config", self.endpoints.config, _node_key_body, self.config_max_attempts
        )
        if not verdict.ok or verdict.document is None:
            return None
        self.config = verdict.document
        # osquery's config source is the compact re-serialization; its hash is SHA-1 of it.
        self.config_text = orjson.dumps(verdict.document).decode()
        self.config_hash = hashlib.sha1(self.config_text.encode()).hexdigest()
        self.profile.config_hash = hashlib.sha1(self.config_hash.encode()).hexdigest()
        return self.config

    # -- logger (§7) ---------------------------------------------------------------------

    async def send_logs(
        self,
        log_type: str,
        records: Sequence[LogRecord],
        compress: bool | None = None,
    ) -> bool:
        """One logger POST of `records` ("result"/"status"); True if osquery would delete them."""
        compress = self.logger_tls_compress if compress is None else compress
        lines = [_log_line(record) for record in records]
        lines = [line for line in lines if line is not None]

        def body_for(key: str) -> bytes:
            return _logger_body(lines, log_type, key, compressed=compress)

        verdict = await self._go("logger", self.endpoints.logger, body_for, compress=compress)
        return verdict.ok

    # -- distributed (§9) ----------------------------------------------------------------

    def distributed_pause_s(self) -> int:
        """How long osquery sleeps before its next read: 5 s while accelerated."""
        if self.clock() <= self.accelerated_until:
            return ACCELERATED_INTERVAL_S
        return self.distributed_interval_s

    async def distributed_read(self) -> DistributedWork | None:
        """One distributed read with 3 attempts; None if all failed."""
        verdict = await self._go_with_retries(
            "distributed",
            self.endpoints.distributed_read,
            _node_key_body,
            self.distributed_max_attempts,
        )
        if not verdict.ok or verdict.document is None:
            return None
        document = verdict.document
        return DistributedWork(
            queries=_object_member(document, "queries"),
            discovery=_object_member(document, "discovery"),
            accelerate=document.get("accelerate"),
        )

    async def distributed_write(self, results: Mapping[str, QueryResult]) -> bool:
        """One distributed write of `results` with 3 attempts."""

        def body_for(key: str) -> bytes:
            return orjson.dumps(
                {
                    "queries": {qid: result.rows for qid, result in results.items()},
                    "statuses": {qid: result.status for qid, result in results.items()},
                    "messages": {qid: result.message for qid, result in results.items()},
                    "stats": {qid: result.stats for qid, result in results.items()},
                    "node_key": key,
                }
            )

        verdict = await self._go_with_retries(
            "distributed",
            self.endpoints.distributed_write,
            body_for,
            self.distributed_max_attempts,
        )
        return verdict.ok

    async def run_distributed_once(self, executor: Executor | None = None) -> DistributedRound:
        """One DistributedRunner loop: read, run ids in sorted order, write everything once.

        Results of a failed write are kept and sent again, merged, on the next call.
        """
        run = executor or TableExecutor(self.profile)
        work = await self.distributed_read()
        pending, rejected = self._accept_work(work, run) if work else ({}, "")
        results = {qid: _run_query(run, pending[qid]) for qid in sorted(pending)}
        to_send = {**self.unsent_results, **results}
        if not to_send:
            return DistributedRound(work, results, None, rejected)
        written = await self.distributed_write(to_send)
        self.unsent_results = {} if written else to_send
        return DistributedRound(work, results, written, rejected)

    def _accept_work(self, work: DistributedWork, run: Executor) -> tuple[dict[str, str], str]:
        """osquery's acceptWork: discovery gates, then queries, then accelerate."""
        discovered: dict[str, bool] = {}
        for qid, sql in work.discovery.items():
            if not isinstance(sql, str) or not sql:
                return {}, "Distributed discovery query is not a string"
            outcome = run(sql)
            if not outcome.ok:
                return {}, "Distributed discovery query has an SQL error"
            discovered[qid] = bool(outcome.rows)
        pending: dict[str, str] = {}
        for qid, sql in work.queries.items():
            if not isinstance(sql, str) or not sql or not qid:
                return pending, "Distributed query is not a string"  # earlier ones stay
            if discovered.get(qid, True):
                pending[qid] = sql
        accelerate = work.accelerate
        if isinstance(accelerate, int) and not isinstance(accelerate, bool):
            self.accelerated_until = self.clock() + accelerate
        return pending, ""

    # -- carver (§10) --------------------------------------------------------------------

    async def carve(self, data: bytes, carve_id: str = "") -> CarveResult:
        """Upload `data` as one carve: a start request, then base64 blocks in order."""
        carve_id = carve_id or str(uuid.uuid4())
        request_id = str(uuid.uuid4())  # a fresh UUID, not the distributed query id
        block_size = self.carver_block_size
        key = await self.get_node_key()  # makeURI is computed once per carve
        start = {
            "block_count": math.ceil(len(data) / block_size),
            "block_size": block_size,
            "carve_size": len(data),
            "carve_id": carve_id,
            "request_id": request_id,
            "node_key": key,
        }
        document = await self._carver_request(self.endpoints.carve_start, start, key)
        session_id = (document or {}).get("session_id")
        if not isinstance(session_id, str) or not session_id:
            return CarveResult(carve_id, request_id, "", ok=False)
        for block_id in range(start["block_count"]):
            block = data[block_id * block_size : (block_id + 1) * block_size]
            body = {
                "block_id": block_id,
                "session_id": session_id,
                "request_id": request_id,
                "data": base64.b64encode(block).decode(),
            }
            if await self._carver_request(self.endpoints.carve_continue, body, key) is None:
                return CarveResult(carve_id, request_id, session_id, ok=False)
        return CarveResult(carve_id, request_id, session_id, ok=True)

    async def _carver_request(
        self, endpoint: str, body: dict[str, Any], key: str
    ) -> dict[str, Any] | None:
        """3 attempts (5.22+); success is any parseable body. Returns the parsed object."""
        for attempt in range(1, 4):
            response = await self._post("carver", endpoint, orjson.dumps(body), key)
            if response is not None:
                document, reason = parse_body(self._decoded_body(response))
                if document is not None:
                    return document
                self.last_error = reason
            if attempt < 3:
                await self._sleep(attempt * attempt)
        return None

    # -- the request helper (§3) ---------------------------------------------------------

    async def _go_with_retries(
        self, plugin: str, endpoint: str, body_for: Callable[[str], bytes], attempts: int
    ) -> Verdict:
        verdict = Verdict(ok=False, document=None, message="no attempt made")
        for attempt in range(1, attempts + 1):
            # Each attempt asks for the key again: after node_invalid this re-enrolls.
            verdict = await self._go(plugin, endpoint, body_for)
            if verdict.ok:
                return verdict
            if attempt < attempts:
                await self._sleep(attempt * attempt)
        return verdict

    async def _go(
        self,
        plugin: str,
        endpoint: str,
        body_for: Callable[[str], bytes],
        compress: bool = False,
    ) -> Verdict:
        key = await self.get_node_key()
        body = body_for(key)
        if compress:
            body = gzip_like_osquery(body)
        response = await self._post(plugin, endpoint, body, key, compressed=compress)
        if response is None:
            return Verdict(ok=False, document=None, message=self.last_error)
        verdict = judge_response(self._decoded_body(response))
        if verdict.node_invalid and not self.disable_reenrollment:
            self.node_key = ""
        if not verdict.ok:
            self.last_error = verdict.message
        return verdict

    async def _post(
        self, plugin: str, endpoint: str, body: bytes, key: str, compressed: bool = False
    ) -> HttpResponse | None:
        headers = osquery_headers(
            version=self.version,
            host_header=self.address.host_header,
            node_key=key,
            compressed=compressed,
            accept_gzip=self.accept_gzip,
        )
        try:
            connection = self._connection(plugin)
            return await connection.request("POST", self._target(endpoint), headers, body)
        except (TimeoutError, *RESENDABLE_ERRORS) as error:
            self.last_error = f"Request error: {error!r}"
            return None

    def _target(self, endpoint: str) -> str:
        target = self.address.path_prefix + endpoint
        if self.tls_secret_always:
            # Appended unencoded, exactly as osquery does.
            separator = "&" if "?" in target else "?"
            target += f"{separator}{self.tls_enroll_override}={self.enroll_secret}"
        return target

    def _connection(self, plugin: str) -> HttpConnection:
        connection = self._connections.get(plugin)
        if connection is None:
            connection = HttpConnection(
                self.address, self._ssl(), timeout_s=self.timeout_s, counters=self.counters
            )
            self._connections[plugin] = connection
        return connection

    def _ssl(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            if self.ca_file is None:
                raise ValueError("OsqueryNode needs ca_file or ssl_context")
            self.ssl_context = osquery_ssl_context(self.ca_file, self.client_cert, self.client_key)
        return self.ssl_context

    def _decoded_body(self, response: HttpResponse) -> bytes:
        if self.accept_gzip and response.headers.get("content-encoding") == "gzip":
            try:
                return gzip.decompress(response.body)
            except (OSError, EOFError, zlib.error):
                return response.body  # osquery keeps the raw body; parsing then fails
        return response.body

    async def _sleep(self, seconds: float) -> None:
        self.retry_sleeps.append(seconds)
        await asyncio.sleep(seconds * self.retry_time_scale)


class LogBuffer:
    """The TLS logger's buffer and forwarder (`BufferedLogForwarder`, spec §7.1-§7.3).

    Lines are stored under osquery's keys (`tls_r_<time>_<n>`, `tls_s_<time>_<n>`); each
    `check()` takes the first `max_lines` keys in lexicographic order (so results go
    before status lines), sends one result and one status request, and deletes a category
    only when its request succeeded. After the k-th consecutive failure a category waits
    `period * k²` seconds (capped at `backoff_max_s`), counted down one check at a time.
    """

    def __init__(
        self,
        node: OsqueryNode,
        *,
        max_lines: int = 1024,
        period_s: float = 4.0,
        backoff_max_s: float = 3600.0,
        max_line_bytes: int = MAX_LOG_LINE_BYTES,
    ) -> None:
        self.node = node
        self.max_lines = max_lines
        self.period_s = period_s
        self.backoff_max_s = backoff_max_s
        self.max_line_bytes = max_line_bytes
        self._lines: dict[str, bytes] = {}
        self._counter = 0  # osquery's per-process log index, starting at 1
        self._failures = {"result": 0, "status": 0}
        self._wait_s = {"result": 0.0, "status": 0.0}

    def add_result(self, record: LogRecord, unix_time: int | None = None) -> None:
        self._add("r", record, unix_time)

    def add_status(self, record: LogRecord, unix_time: int | None = None) -> None:
        self._add("s", record, unix_time)

    def pending(self, log_type: str | None = None) -> int:
        """Buffered lines, of one type ("result"/"status") or all."""
        if log_type is None:
            return len(self._lines)
        prefix = f"tls_{log_type[0]}_"
        return sum(1 for key in self._lines if key.startswith(prefix))

    async def check(self) -> dict[str, bool]:
        """One forwarder tick. Returns, per log type attempted, whether it was delivered."""
        keys = sorted(self._lines)[: self.max_lines]
        batches = {
            "result": [key for key in keys if key.startswith("tls_r_")],
            "status": [key for key in keys if key.startswith("tls_s_")],
        }
        delivered: dict[str, bool] = {}
        for log_type, batch in batches.items():
            if not batch or self._backing_off(log_type):
                continue
            lines = [self._lines[key] for key in batch]
            # Oversized lines are left out of the request but deleted with the batch.
            sendable = [line for line in lines if len(line) <= self.max_line_bytes]
            ok = await self.node.send_logs(log_type, sendable)
            delivered[log_type] = ok
            if ok:
                for key in batch:
                    del self._lines[key]
            self._record_outcome(log_type, ok)
        return delivered

    async def run(self, stop: asyncio.Event) -> None:
        """Flush at once, then every period (scaled like the node's retries) until stopped."""
        while not stop.is_set():
            await self.check()
            pause_s = self.period_s * self.node.retry_time_scale
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause_s)

    def _add(self, kind: str, record: LogRecord, unix_time: int | None) -> None:
        self._counter += 1
        when = int(self.node.clock()) if unix_time is None else unix_time
        line = record if isinstance(record, bytes) else orjson.dumps(record)
        self._lines[f"tls_{kind}_{when}_{self._counter}"] = line

    def _backing_off(self, log_type: str) -> bool:
        if self._wait_s[log_type] <= 0:
            return False
        self._wait_s[log_type] -= self.period_s
        return self._wait_s[log_type] > 0

    def _record_outcome(self, log_type: str, ok: bool) -> None:
        if ok or self.backoff_max_s <= 0:
            self._failures[log_type] = 0
            self._wait_s[log_type] = 0.0
            return
        self._failures[log_type] += 1
        k = self._failures[log_type]
        self._wait_s[log_type] = min(self.period_s * k * k, self.backoff_max_s)


def gzip_like_osquery(body: bytes) -> bytes:
    """zlib level 9, gzip wrapper, memLevel 9: header 1f 8b 08 00 00000000 02 03 (spec §2.6)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9)
    return compressor.compress(body) + compressor.flush()


def _node_key_body(key: str) -> bytes:
    return orjson.dumps({"node_key": key})


def _node_key_from(document: dict[str, Any] | None) -> str:
    """`node_key`, or `id` only when node_key is absent; it must be a non-empty string."""
    if document is None:
        return ""
    key = document["node_key"] if "node_key" in document else document.get("id")
    return key if isinstance(key, str) else ""


def _object_member(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    return value if isinstance(value, dict) else {}


def _log_line(record: LogRecord) -> bytes | None:
    """A record as compact JSON; None for lines osquery would drop (too big or not JSON).

    A bytes line is sent as is, even with bytes that are not UTF-8 in its strings: osquery's
    rapidjson does not validate encodings (spec §8.6). Replacing them only for the check
    cannot make JSON valid or invalid.
    """
    if isinstance(record, bytes):
        try:
            orjson.loads(record.decode("utf-8", errors="replace"))
        except orjson.JSONDecodeError:
            return None
        line = record
    else:
        line = orjson.dumps(record)
    return line if len(line) <= MAX_LOG_LINE_BYTES else None


def _logger_body(lines: list[bytes], log_type: str, key: str, *, compressed: bool) -> bytes:
    data = b"[" + b",".join(lines) + b"]"
    log_type_json, key_json = orjson.dumps(log_type), orjson.dumps(key)
    if compressed:  # rapidjson's RemoveMember swap gives this order for compressed bodies
        parts = [b'{"node_key":', key_json, b',"log_type":', log_type_json, b',"data":', data]
    else:
        parts = [b'{"data":', data, b',"log_type":', log_type_json, b',"node_key":', key_json]
    return b"".join(parts) + b"}"


def _run_query(run: Executor, sql: str) -> QueryResult:
    started = time.perf_counter()
    outcome = run(sql)
    wall_time_ms = int((time.perf_counter() - started) * 1000)
    stats = {"wall_time_ms": wall_time_ms, "user_time": 0, "system_time": 0, "memory": 0}
    if outcome.ok:
        return QueryResult(rows=outcome.rows, status=0, message="", stats=stats)
    return QueryResult(rows=[], status=1, message=outcome.error or "", stats=stats)
