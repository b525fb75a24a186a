"""Tests of the osquery client emulator against a small recording HTTPS server.

The server records every request exactly as it arrived (header names, order, raw body)
and answers from a per-path script, so each test checks what osqueryd would have put on
the wire and how it reacts to the answers.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from osquery_config.host_queries import builtin_groups
from quarry.encryption.gateway_certificates import TlsFiles, ensure_certificates
from tests.emulator import (
    OSQUERY_DOC_ENDPOINTS,
    HostProfile,
    LogBuffer,
    OsqueryNode,
    TableExecutor,
    log_records,
)

SECRET = "s3cr3t"
SHA1_VECTOR_BODY = (
    '{"schedule":{"tls_proc":{"query":"select * from processes","interval":1}},'
    '"node_invalid":false,"node":true}'
)


@dataclass(frozen=True)
class Reply:
    body: bytes = b"{}"
    status: int = 200
    drop: bool = False  # close the connection instead of answering
    hang: bool = False  # never answer
    chunked: bool = False
    close: bool = False  # answer with Connection: close


@dataclass(frozen=True)
class Recorded:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def json(self) -> Any:
        raw = gzip.decompress(self.body) if self.header("Content-Encoding") else self.body
        return json.loads(raw)


def reply_json(document: Any, **options: Any) -> Reply:
    return Reply(body=json.dumps(document).encode(), **options)


@dataclass
class RecordingServer:
    """An HTTPS/1.1 server answering each path from a script; the last reply repeats."""

    tls: TlsFiles
    script: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    async def start(self) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert, self.tls.key)
        self._handlers: set[asyncio.Task[None]] = set()
        self._server = await asyncio.start_server(self._serve, "localhost", 0, ssl=context)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def to(self, path: str) -> list[Recorded]:
        return [request for request in self.requests if request.path == path]

    def _reply_for(self, path: str) -> Reply:
        replies = self.script.get(path)
        if not replies:
            return reply_json({"node_key": "nk-1"}) if path.endswith("enroll") else Reply()
        return replies.pop(0) if len(replies) > 1 else replies[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            while True:
                request = await _read_request(reader)
                self.requests.append(request)
                reply = self._reply_for(request.path)
                if reply.hang:
                    await asyncio.Event().wait()
                if reply.drop:
                    return
                writer.write(_encode_reply(reply))
                await writer.drain()
                if reply.close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        except asyncio.CancelledError:
            return  # the server is stopping; end the handler quietly
        finally:
            self._handlers.discard(handler)
            writer.transport.abort()


async def _read_request(reader: asyncio.StreamReader) -> Recorded:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    request_line, *lines = head[:-4].split("\r\n")
    method, target, _ = request_line.split(" ")
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    length = int(dict(headers).get("Content-Length", "0"))
    return Recorded(method, target, headers, await reader.readexactly(length))


def _encode_reply(reply: Reply) -> bytes:
    head = f"HTTP/1.1 {reply.status} X\r\nContent-Type: application/json\r\n"
    if reply.close:
        head += "Connection: close\r\n"
    if reply.chunked:
        half = len(reply.body) // 2
        chunks = [reply.body[:half], reply.body[half:], b""]
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + body
    return (head + f"Content-Length: {len(reply.body)}\r\n\r\n").encode() + reply.body


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_certificates(Path(tmp_path_factory.mktemp("tls")), ["localhost"])


Scenario = Callable[[RecordingServer, Callable[..., OsqueryNode]], Coroutine[Any, Any, None]]


def run_scenario(tls: TlsFiles, scenario: Scenario, script: dict[str, list[Reply]] | None = None):
    """Start the server, hand the scenario a node factory, and close everything after."""

    async def main() -> RecordingServer:
        server = RecordingServer(tls, script or {})
        port = await server.start()
        nodes: list[OsqueryNode] = []

        def make_node(**options: Any) -> OsqueryNode:
            settings = {
                "server": f"localhost:{port}",
                "ca_file": tls.ca_cert,
                "enroll_secret": SECRET,
                "retry_time_scale": 0.0,
            }
            node = OsqueryNode(**(settings | options))
            nodes.append(node)
            return node

        try:
            await scenario(server, make_node)
        finally:
            for node in nodes:
                await node.aclose()
            await server.stop()
        return server

    return asyncio.run(main())


ENROLL = "/api/v1/osquery/enroll"
CONFIG = "/api/v1/osquery/config"
LOG = "/api/v1/osquery/log"
READ = "/api/v1/osquery/distributed/read"
WRITE = "/api/v1/osquery/distributed/write"


def test_enroll_then_config_send_osquery_headers_in_order(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(profile=HostProfile.make(3))
        assert await node.fetch_config() == {}
        assert node.node_key == "nk-1"

    server = run_scenario(tls, scenario)
    enroll, config = server.requests
    assert (enroll.method, enroll.path, config.path) == ("POST", ENROLL, CONFIG)
    assert [name for name, _ in enroll.headers] == [
        "Content-Type",
        "Accept",
        "User-Agent",
        "Host",
        "Content-Length",
    ]
    assert config.headers == [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("User-Agent", "osquery/5.23.1"),
        ("Authorization", "NodeKey nk-1"),
        ("Host", f"localhost:{server.port}"),
        ("Content-Length", str(len(config.body))),
    ]
    assert config.body == b'{"node_key":"nk-1"}'


def test_enroll_body_keys_order_and_string_details(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        await make_node(profile=HostProfile.make(5)).get_node_key()

    (enroll,) = run_scenario(tls, scenario).requests
    body = enroll.json()
    assert list(body) == ["enroll_secret", "host_identifier", "platform_type", "host_details"]
    assert body["enroll_secret"] == SECRET
    assert body["host_identifier"] == "web-00005"
    assert body["platform_type"] == "9"
    details = body["host_details"]
    assert list(details) == ["os_version", "osquery_info", "platform_info", "system_info"]
    for row in details.values():
        assert list(row) == sorted(row)
        assert all(isinstance(value, str) for value in row.values())
    assert details["system_info"]["hostname"] == "web-00005"
    assert details["osquery_info"]["platform_mask"] == "9"


def test_no_authorization_header_before_5_23(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        await make_node(version="5.22.1", node_key="cached").fetch_config()

    (config,) = run_scenario(tls, scenario).requests
    assert config.header("Authorization") is None
    assert config.header("User-Agent") == "osquery/5.22.1"
    assert config.json() == {"node_key": "cached"}


def test_enroll_accepts_id_when_node_key_is_absent(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        assert await make_node().get_node_key() == "from-id"

    run_scenario(tls, scenario, {ENROLL: [reply_json({"id": "from-id"})]})


def test_enroll_does_not_fall_back_to_id_when_node_key_is_not_a_string(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(enroll_max_attempts=2)
        assert await node.get_node_key() == ""
        assert node.retry_sleeps == [1]

    server = run_scenario(tls, scenario, {ENROLL: [reply_json({"node_key": 5, "id": "x"})]})
    assert server.paths() == [ENROLL, ENROLL]


def test_enroll_retries_twelve_times_with_square_backoff(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node()
        assert await node.get_node_key() == ""
        assert node.retry_sleeps == [n * n for n in range(1, 12)]
        capped = make_node(enroll_max_attempts=6, enroll_max_interval_s=10)
        await capped.get_node_key()
        assert capped.retry_sleeps == [1, 4, 9, 10, 10]

    server = run_scenario(tls, scenario, {ENROLL: [reply_json({"node_invalid": True})]})
    assert server.paths() == [ENROLL] * (12 + 6)


def test_transparent_resend_after_dropped_connection(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1")
        assert await node.fetch_config() == {"a": 1}
        assert node.counters.resends == 1
        assert node.retry_sleeps == []  # a resend is not a retry

    script = {CONFIG: [Reply(drop=True), reply_json({"a": 1})]}
    server = run_scenario(tls, scenario, script)
    first, second = server.requests
    assert first.path == second.path == CONFIG
    assert first.body == second.body and first.headers == second.headers


def test_timeout_is_not_resent(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1", timeout_s=0.3)
        assert not await node.send_logs("status", [{"message": "x"}])
        assert node.counters.resends == 0
        assert "TimeoutError" in node.last_error

    server = run_scenario(tls, scenario, {LOG: [Reply(hang=True)]})
    assert server.paths() == [LOG]


def test_node_invalid_on_config_reenrolls_inside_the_same_call(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-old")
        assert await node.fetch_config() == {"schedule": {}}
        assert node.node_key == "nk-2"
        assert node.retry_sleeps == [1]

    script = {
        CONFIG: [reply_json({"node_invalid": True}), reply_json({"schedule": {}})],
        ENROLL: [reply_json({"node_key": "nk-2"})],
    }
    server = run_scenario(tls, scenario, script)
    assert server.paths() == [CONFIG, ENROLL, CONFIG]
    assert [r.header("Authorization") for r in server.to(CONFIG)] == [
        "NodeKey nk-old",
        "NodeKey nk-2",
    ]
    assert server.to(CONFIG)[1].json() == {"node_key": "nk-2"}


def test_error_member_fails_config_after_three_attempts(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1")
        assert await node.fetch_config() is None
        assert node.retry_sleeps == [1, 4]
        assert node.last_error == "Request failed: nope"
        assert node.node_key == "nk-1"  # an error does not clear the key

    server = run_scenario(tls, scenario, {CONFIG: [reply_json({"schedule": {}, "error": "nope"})]})
    assert server.paths() == [CONFIG] * 3


def test_body_decides_success_not_http_status(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1")
        assert await node.send_logs("status", [{"m": 1}])  # 500 with {}
        assert await node.send_logs("status", [{"m": 2}])  # 404 with an empty body
        assert not await node.send_logs("status", [{"m": 3}])  # 200 with HTML
        assert not await node.send_logs("status", [{"m": 4}])  # whitespace only
        assert not await node.send_logs("status", [{"m": 5}])  # a JSON array

    script = {
        LOG: [
            Reply(b"{}", status=500),
            Reply(b"", status=404),
            Reply(b"<html>ok</html>"),
            Reply(b"  \n"),
            Reply(b"[]"),
        ]
    }
    run_scenario(tls, scenario, script)


def test_config_hash_matches_osquery_test_vector(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1")
        config = await node.fetch_config()
        assert config is not None and config["node"] is True
        assert node.config_text == SHA1_VECTOR_BODY
        assert node.config_hash == "1c70dc4608ed9f8d8e24d23359a46e8739a93558"
        assert node.profile.table("osquery_info")[0]["config_valid"] == "1"

    run_scenario(tls, scenario, {CONFIG: [Reply(SHA1_VECTOR_BODY.encode(), chunked=True)]})


def test_log_bodies_plain_and_gzip_like_osquery(tls: TlsFiles) -> None:
    records = [log_records.status_record("web-01", 1736072430, "hello", line=7)]

    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1")
        assert await node.send_logs("status", records)
        assert await node.send_logs("status", records, compress=True)

    plain, packed = run_scenario(tls, scenario).requests
    assert list(plain.json()) == ["data", "log_type", "node_key"]
    assert plain.json()["data"] == records
    assert [name for name, _ in packed.headers] == [
        "Content-Type",
        "Accept",
        "User-Agent",
        "Authorization",
        "Content-Encoding",
        "Host",
        "Content-Length",
    ]
    assert packed.header("Content-Encoding") == "gzip"
    assert packed.body[:10] == bytes.fromhex("1f8b0800000000000203")
    assert list(packed.json()) == ["node_key", "log_type", "data"]
    assert packed.json() == {"node_key": "nk-1", "log_type": "status", "data": records}


def test_log_buffer_sends_results_first_and_keeps_lines_on_failure(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        buffer = LogBuffer(make_node(node_key="nk-1"))
        buffer.add_status({"message": "s1"}, unix_time=100)
        buffer.add_result({"name": "r1"}, unix_time=200)
        assert await buffer.check() == {"result": False, "status": False}
        assert buffer.pending() == 2
        assert await buffer.check() == {"result": True, "status": True}
        assert buffer.pending() == 0

    script = {LOG: [reply_json({"error": "spool full"})] * 2 + [Reply()]}
    server = run_scenario(tls, scenario, script)
    assert [r.json()["log_type"] for r in server.requests] == ["result", "status"] * 2
    assert server.requests[2].json()["data"] == [{"name": "r1"}]


def test_log_buffer_caps_lines_per_check_and_backs_off(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        buffer = LogBuffer(make_node(node_key="nk-1"))
        for n in range(1030):
            buffer.add_result({"n": n}, unix_time=100)
        buffer.add_status({"message": "late"}, unix_time=50)
        assert await buffer.check() == {"result": True}  # 1024 results; status starves
        assert buffer.pending() == 7
        assert await buffer.check() == {"result": True, "status": True}

        failing = LogBuffer(make_node(node_key="nk-bad"))
        failing.add_result({"n": 0})
        attempts = [bool(await failing.check()) for _ in range(7)]
        # Waits of period*k²: 4 s after one failure, then 16 s (three skipped checks).
        assert attempts == [True, True, False, False, False, True, False]
        assert failing.pending() == 1

    script = {LOG: [Reply()] * 3 + [reply_json({"node_invalid": False, "error": "down"})]}
    server = run_scenario(tls, scenario, script)
    first, second = (r.json() for r in server.requests[:2])
    assert len(first["data"]) == 1024 and first["log_type"] == "result"
    assert len(second["data"]) == 6


def test_node_invalid_on_logs_clears_key_and_next_send_reenrolls(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-old")
        assert not await node.send_logs("result", [{"a": "1"}])
        assert node.node_key == ""
        assert await node.send_logs("result", [{"a": "1"}])

    script = {LOG: [reply_json({"node_invalid": True}), Reply()]}
    server = run_scenario(tls, scenario, script)
    assert server.paths() == [LOG, ENROLL, LOG]
    assert server.requests[2].json()["node_key"] == "nk-1"


def test_distributed_round_runs_sorted_ids_and_writes_one_body(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1", profile=HostProfile.make(1))
        assert node.distributed_pause_s() == 60
        round_ = await node.run_distributed_once()
        assert list(round_.results) == ["a", "b", "c"]
        assert round_.written is True
        assert node.distributed_pause_s() == 5  # accelerated for 60 s

    queries = {
        "c": "SELECT 1",
        "b": "SELECT version, build_platform FROM osquery_info",
        "a": "SELECT * FROM does_not_exist",
    }
    script = {READ: [reply_json({"queries": queries, "accelerate": 60})]}
    server = run_scenario(tls, scenario, script)
    assert server.paths() == [READ, WRITE]
    assert server.requests[0].body == b'{"node_key":"nk-1"}'
    body = server.requests[1].json()
    assert list(body) == ["queries", "statuses", "messages", "stats", "node_key"]
    assert list(body["queries"]) == ["a", "b", "c"]
    assert body["queries"]["b"] == [{"version": "5.23.1", "build_platform": "linux"}]
    assert body["queries"]["a"] == [] and body["queries"]["c"] == [{"1": "1"}]
    assert body["statuses"] == {"a": 1, "b": 0, "c": 0}
    assert body["messages"] == {"a": "no such table: does_not_exist", "b": "", "c": ""}
    for stats in body["stats"].values():
        assert list(stats) == ["wall_time_ms", "user_time", "system_time", "memory"]
        assert all(isinstance(value, int) for value in stats.values())


def test_failed_distributed_write_is_merged_into_the_next(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1")
        assert (await node.run_distributed_once()).written is False
        assert list(node.unsent_results) == ["q1"]
        assert (await node.run_distributed_once()).written is True
        assert node.unsent_results == {}

    script = {
        READ: [
            reply_json({"queries": {"q1": "SELECT 1"}}),
            reply_json({"queries": {"q2": "SELECT 2"}}),
        ],
        WRITE: [reply_json({"error": "busy"})] * 3 + [Reply()],
    }
    server = run_scenario(tls, scenario, script)
    writes = server.to(WRITE)
    assert len(writes) == 4
    assert writes[-1].json()["queries"] == {"q1": [{"1": "1"}], "q2": [{"2": "2"}]}


def test_discovery_error_rejects_the_whole_read(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        round_ = await make_node(node_key="nk-1").run_distributed_once()
        assert round_.rejected == "Distributed discovery query has an SQL error"
        assert round_.written is None

    read = {"queries": {"q1": "SELECT 1"}, "discovery": {"q1": "SELECT * FROM nope"}}
    server = run_scenario(tls, scenario, {READ: [reply_json(read)]})
    assert server.paths() == [READ]


def test_secret_always_and_short_paths(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(
            endpoints=OSQUERY_DOC_ENDPOINTS,
            tls_secret_always=True,
            tls_enroll_override="secret",
        )
        await node.fetch_config()
        await node.fetch_config()

    server = run_scenario(tls, scenario)
    assert [r.target for r in server.requests] == [
        "/enroll?secret=s3cr3t",
        "/config?secret=s3cr3t",
        "/config?secret=s3cr3t",
    ]
    assert next(iter(server.requests[0].json())) == "secret"


def test_keep_alive_per_plugin_and_connection_close(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node()
        for _ in range(3):
            await node.fetch_config()
        assert node.counters.connections == 2  # one for enroll, one reused for config
        await node.send_logs("status", [])
        await node.send_logs("status", [])
        assert node.counters.connections == 4  # the logger's first reply said close
        assert node.counters.requests == 6

    run_scenario(tls, scenario, {LOG: [Reply(close=True), Reply()]})


def test_carve_sends_start_then_blocks(tls: TlsFiles) -> None:
    async def scenario(server: RecordingServer, make_node: Callable[..., OsqueryNode]) -> None:
        node = make_node(node_key="nk-1", carver_block_size=4)
        result = await node.carve(b"0123456789", carve_id="guid-1")
        assert result.ok and result.session_id == "S1"

    begin, block = "/api/v1/osquery/carve/begin", "/api/v1/osquery/carve/block"
    server = run_scenario(tls, scenario, {begin: [reply_json({"session_id": "S1"})]})
    start, *blocks = server.requests
    assert start.json() == {
        "block_count": 3,
        "block_size": 4,
        "carve_size": 10,
        "carve_id": "guid-1",
        "request_id": start.json()["request_id"],
        "node_key": "nk-1",
    }
    assert [b.path for b in blocks] == [block] * 3
    assert [list(b.json()) for b in blocks] == [
        ["block_id", "session_id", "request_id", "data"]
    ] * 3
    assert [b.json()["data"] for b in blocks] == ["MDEyMw==", "NDU2Nw==", "ODk="]
    assert all(b.header("Authorization") == "NodeKey nk-1" for b in server.requests)


def test_table_executor_answers_and_fails_like_sqlite() -> None:
    run = TableExecutor(HostProfile.make(2))
    assert run("SELECT 1").rows == [{"1": "1"}]
    assert run("SELECT 1 WHERE false;").rows == []
    assert run("select count(*) from users").rows == [{"count(*)": "2"}]
    assert run("SELECT name AS n FROM processes WHERE pid = 1").rows == [{"n": "systemd"}]
    assert run("SELECT hostname FROM system_info").rows == [{"hostname": "web-00002"}]
    assert run("SELECT * FROM nope").error == "no such table: nope"
    assert run("SELECT nope FROM users").error == "no such column: nope"
    assert run("DELETE FROM users").error == 'near "DELETE": syntax error'


def test_log_record_shapes() -> None:
    assert log_records.calendar_time(1736072430) == "Sun Jan  5 10:20:30 2025 UTC"
    event = log_records.event_record(
        "procs", "web-01", 1736072430, {"pid": 5, "name": "x"}, decorations={"u": "a"}
    )
    assert list(event) == [
        "name",
        "hostIdentifier",
        "calendarTime",
        "unixTime",
        "epoch",
        "counter",
        "numerics",
        "decorations",
        "columns",
        "action",
    ]
    assert event["columns"] == {"name": "x", "pid": "5"} and list(event["columns"]) == [
        "name",
        "pid",
    ]
    snapshot = log_records.snapshot_record("snap", "web-01", 1, [{"a": 1.0}])
    assert list(snapshot)[:3] == ["snapshot", "action", "name"]
    assert snapshot["snapshot"] == [{"a": "1.0"}]
    batch = log_records.batch_record("q", "h", 1, added=[{"a": "1"}])
    assert batch["diffResults"] == {"removed": [], "added": [{"a": "1"}]}
    removed_first = log_records.event_records("q", "h", 1, added=[{"a": "1"}], removed=[{"a": "0"}])
    assert [record["action"] for record in removed_first] == ["removed", "added"]
    old_status = log_records.status_record("h", 5, "m", line=9, all_strings=True)
    assert (old_status["unixTime"], old_status["severity"], old_status["line"]) == ("5", "0", "9")


def test_host_profiles_are_distinct_and_deterministic() -> None:
    hosts = [HostProfile.make(index) for index in range(1000)]
    for attribute in ("hostname", "hardware_uuid", "hardware_serial"):
        assert len({getattr(host, attribute) for host in hosts}) == 1000
    assert HostProfile.make(42) == HostProfile.make(42)
    assert HostProfile.make(1, platform="darwin").platform_type == "21"
    assert "extra" in HostProfile.make(1, platform="darwin").table("os_version")[0]


def test_hosts_answer_the_vitals_and_software_queries_of_their_platform() -> None:
    """Every built-in host query runs on the emulator of its platform (docs/inventory.md);
    a table the host's osquery lacks fails as osquery reports it."""
    for platform in ("linux", "darwin", "windows"):
        run = TableExecutor(HostProfile.make(7, platform=platform))
        for group in builtin_groups(3600, 86400):
            for name, sql in group.sql_for(platform).items():
                assert run(sql).ok, (platform, name, run(sql).error)
    linux = TableExecutor(HostProfile.make(7))
    packages = linux("SELECT name, version, arch AS detail FROM deb_packages").rows
    assert {"name": "bash", "version": "5.1-6ubuntu1.1", "detail": "amd64"} in packages
    mounts = linux("SELECT path FROM mounts WHERE path IN ('/', '/home')").rows
    assert mounts == [{"path": "/"}]
    mac = TableExecutor(HostProfile.make(7, platform="darwin"))
    extensions = mac("SELECT name, uid FROM users CROSS JOIN chrome_extensions USING (uid)").rows
    assert [row["name"] for row in extensions] == ["Google Docs Offline"]
    assert linux("SELECT * FROM programs").error == "no such table: programs"
    old = TableExecutor(replace(HostProfile.make(7), missing_tables=frozenset({"python_packages"})))
    assert old("SELECT name FROM python_packages").error == "no such table: python_packages"
