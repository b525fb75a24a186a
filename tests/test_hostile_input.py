"""Hostile input: the gateway refuses it with a JSON error, counts it, and keeps serving.

A cluster started by `quarry up` (tighter limits than the defaults, so the tests stay
small) gets raw HTTPS requests no osquery would send: oversized, inflating, slow,
malformed, mistyped, deeply nested. Every answer must be a JSON object osquery
understands ({"error": ...} or node_invalid), never a traceback, and the gateway must
still serve a real node afterwards. Hypothesis then posts random JSON objects shaped
like each endpoint's body, and fuzzes the gzip and JSON decoding in-process.

Enrollment abuse is checked on a real enroll service: token buckets per source
address and per secret, and wrong secrets that leave no trace in the store.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import socket
import ssl
import urllib.request
import zlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.request_body import (
    BAD_GZIP,
    DECOMPRESSED_TOO_LARGE,
    REFUSAL_REASONS,
    BadRequest,
    BodyLimits,
    GzipInflater,
    parse_json_object,
)
from protos.v1 import enroll_pb2, enroll_pb2_grpc
from tests.emulator import HostProfile, OsqueryNode
from tests.free_ports import free_port_base
from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.service_processes import ServiceProcess

MAX_JSON_VALUES = 20_000
MAX_STRING_CHARS = 50_000
MAX_DECOMPRESSED = 8 << 20
_host_numbers = itertools.count(1)
T = TypeVar("T")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    limits = {
        "QUARRY_REQUEST_MAX_DECOMPRESSED_BYTES": str(MAX_DECOMPRESSED),
        "QUARRY_REQUEST_MAX_JSON_VALUES": str(MAX_JSON_VALUES),
        "QUARRY_REQUEST_MAX_STRING_CHARS": str(MAX_STRING_CHARS),
        "QUARRY_REQUEST_BODY_TIMEOUT_S": "1",
        "QUARRY_REQUEST_HEAD_TIMEOUT_S": "1",
    }
    with quarry_cluster(tmp_path_factory.mktemp("hostile"), extra_env=limits) as running:
        yield running


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict), self.body[:200]
        return parsed


def tls_connection(cluster: QuarryCluster) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    host, port = cluster.gateway.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return context.wrap_socket(sock, server_hostname=host)


def exchange(cluster: QuarryCluster, head: list[str], body: bytes = b"") -> Answer:
    """Send a request head (and body), read until the server closes; parse the answer."""
    with tls_connection(cluster) as tls:
        tls.sendall(("\r\n".join([*head, "Connection: close"]) + "\r\n\r\n").encode() + body)
        return read_answer(tls)


def read_answer(tls: ssl.SSLSocket) -> Answer:
    response = b""
    try:
        while chunk := tls.recv(65536):
            response += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass  # the server may close while unread bytes of ours are still in flight
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return Answer(int(lines[0].split()[1]), headers, body)


def post(
    cluster: QuarryCluster, path: str, body: bytes, headers: dict[str, str] | None = None
) -> Answer:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {cluster.gateway}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return exchange(cluster, head, body)


def refused(cluster: QuarryCluster, endpoint: str, reason: str) -> float:
    port = cluster.port_base + 14  # the gateway's metrics port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sample = f'quarry_gateway_refused_requests_total{{endpoint="{endpoint}",reason="{reason}"}}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample)
    )


def new_node(cluster: QuarryCluster) -> OsqueryNode:
    profile = HostProfile.make(next(_host_numbers), seed=cluster.port_base)
    return OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=profile,
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )


def node_key(cluster: QuarryCluster) -> str:
    async def enroll() -> str:
        async with new_node(cluster) as node:
            return await node.get_node_key()

    return run(enroll())


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def assert_still_serving(cluster: QuarryCluster) -> None:
    async def fetch() -> dict | None:
        async with new_node(cluster) as node:
            return await node.fetch_config()

    assert run(fetch()) is not None


def gzip_bomb(inflated_bytes: int) -> bytes:
    """Many gzip members of 1 MiB of zeros each: about 1 KiB per MiB inflated."""
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    return member * (inflated_bytes >> 20)


# --- size, gzip and time limits --------------------------------------------------------


def test_a_declared_oversized_body_is_refused_before_it_is_sent(cluster: QuarryCluster) -> None:
    before = refused(cluster, "config", "body_too_large")
    head = ["POST /config HTTP/1.1", f"Host: {cluster.gateway}", f"Content-Length: {2 << 20}"]
    answer = exchange(cluster, head)  # the body never comes: the answer must not wait for it
    assert answer.status == 413
    assert "exceeds 1048576 bytes" in answer.json()["error"]
    assert answer.headers["connection"] == "close"
    assert refused(cluster, "config", "body_too_large") == before + 1
    assert_still_serving(cluster)


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(cluster: QuarryCluster) -> None:
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    head = [
        "POST /distributed/read HTTP/1.1",
        f"Host: {cluster.gateway}",
        "Transfer-Encoding: chunked",
    ]
    answer = exchange(cluster, head, body)
    assert answer.status == 413
    assert "exceeds" in answer.json()["error"]


def test_a_small_gzip_that_inflates_to_a_gibibyte_is_refused(cluster: QuarryCluster) -> None:
    bomb = gzip_bomb(1 << 30)
    assert len(bomb) < 2 << 20
    before = refused(cluster, "log", "decompressed_too_large")
    answer = post(cluster, "/log", bomb, {"Content-Encoding": "gzip"})
    assert answer.status == 413
    assert f"inflates past {MAX_DECOMPRESSED} bytes" in answer.json()["error"]
    assert refused(cluster, "log", "decompressed_too_large") == before + 1
    assert_still_serving(cluster)


def test_a_gzip_body_within_the_limit_is_read(cluster: QuarryCluster) -> None:
    key = node_key(cluster)
    body = gzip.compress(orjson.dumps({"node_key": key, "log_type": "status", "data": []}))
    assert post(cluster, "/log", body, {"Content-Encoding": "gzip"}).json() == {}


def test_a_body_that_stalls_is_timed_out(cluster: QuarryCluster) -> None:
    head = ["POST /config HTTP/1.1", f"Host: {cluster.gateway}", "Content-Length: 100"]
    answer = exchange(cluster, head, b'{"node_key":')  # then nothing more
    assert answer.status == 408
    assert "not received within 1 s" in answer.json()["error"]
    assert refused(cluster, "config", "body_timeout") >= 1


def test_a_request_head_that_never_ends_is_closed(cluster: QuarryCluster) -> None:
    with tls_connection(cluster) as tls:
        tls.sendall(b"POST /config HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        assert tls.recv(65536) == b""  # closed by the server, with nothing sent
    with tls_connection(cluster) as tls:  # a connection that never sends a byte
        assert tls.recv(65536) == b""
    assert_still_serving(cluster)


# --- malformed bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers", "expected", "reason"),
    [
        ("/config", b"{not json", {}, "not valid JSON", "invalid_json"),
        ("/config", b'{"node_key": "\xff\xfe"}', {}, None, None),  # lenient: node_invalid
        ("/config", b'{"node_key": 1}\xff', {}, "not valid JSON", "invalid_json"),
        ("/log", b"[1, 2]", {}, "JSON object", "not_an_object"),
        ("/log", b'"text"', {}, "JSON object", "not_an_object"),
        ("/log", b"plain text", {"Content-Encoding": "gzip"}, "gzip", "bad_gzip"),
        ("/log", gzip.compress(b"{}")[:-4], {"Content-Encoding": "gzip"}, "cut short", "bad_gzip"),
        ("/log", b"{}", {"Content-Encoding": "br"}, "not supported", "unsupported_encoding"),
        ("/config", b"{}", {"Content-Type": "text/plain"}, "application/json",
         "wrong_content_type"),
        ("/enroll", b"a=b", {"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type",
         "wrong_content_type"),
        ("/config", b"[" * 2000 + b"]" * 2000, {}, "deeper than 1024", "too_deep"),
        ("/config", b'{"a": [' + b"0," * MAX_JSON_VALUES + b"0]}", {}, "more than",
         "too_many_values"),
        ("/config", orjson.dumps({"k": "x" * (MAX_STRING_CHARS + 1)}), {}, "longer than",
         "string_too_long"),
    ],
    ids=[
        "bad-json", "invalid-utf8-in-string", "invalid-utf8-outside", "array", "string",
        "not-gzip", "gzip-cut-short", "brotli", "text-plain", "form-post", "too-deep",
        "too-many-values", "string-too-long",
    ],
)  # fmt: skip
def test_malformed_bodies_get_a_json_error_and_a_count(
    cluster: QuarryCluster,
    path: str,
    body: bytes,
    headers: dict[str, str],
    expected: str | None,
    reason: str | None,
) -> None:
    endpoint = {"/config": "config", "/log": "log", "/enroll": "enroll"}[path]
    before = refused(cluster, endpoint, reason) if reason else 0.0
    answer = post(cluster, path, body, headers).json()
    if expected is None:
        assert answer == {"node_invalid": True}
    else:
        assert expected in answer["error"]
        assert refused(cluster, endpoint, reason) == before + 1  # type: ignore[arg-type]
    assert b"Traceback" not in post(cluster, path, body, headers).body


def test_data_nested_deeper_than_can_be_forwarded_is_refused(cluster: QuarryCluster) -> None:
    key = node_key(cluster)
    deep = b'{"node_key": "%s", "log_type": "result", "data": %s%s}' % (
        key.encode(),
        b"[" * 300,
        b"]" * 300,
    )
    answer = post(cluster, "/log", deep).json()
    assert "deeper than 254" in answer["error"]
    assert_still_serving(cluster)


# --- every field of every endpoint, with the wrong type ------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "expected"),
    [
        ("/enroll", {"host_identifier": ["a"]}, "host_identifier must be a string"),
        ("/enroll", {"platform_type": {"a": 1}}, "platform_type must be a string"),
        ("/enroll", {"host_details": "x"}, "host_details must be an object"),
        ("/log", {"log_type": 5, "data": []}, "log_type must be"),
        ("/log", {"log_type": "result", "data": {"a": 1}}, "data must be a JSON array"),
        ("/distributed/write", {"queries": ["a"]}, "queries must be an object"),
        ("/distributed/write", {"queries": {"q": 5}}, "must be an array of row objects"),
        ("/distributed/write", {"queries": {"q": ["row"]}}, "must be an array of row objects"),
        ("/distributed/write", {"queries": {}, "statuses": {"q": [0]}}, "statuses must be"),
        ("/distributed/write", {"queries": {}, "messages": {"q": 1}}, "messages must be"),
        ("/distributed/write", {"queries": {}, "stats": {"q": "fast"}}, "stats must be"),
        ("/distributed/write", {"queries": {}, "stats": []}, "stats must be"),
    ],
)
def test_a_field_of_the_wrong_type_gets_a_json_error(
    cluster: QuarryCluster, path: str, fields: dict, expected: str
) -> None:
    body = {"node_key": node_key(cluster), "enroll_secret": cluster.enroll_secret, **fields}
    answer = post(cluster, path, orjson.dumps(body))
    assert answer.status == 400
    assert expected in answer.json()["error"]


@pytest.mark.parametrize("path", ["/config", "/distributed/read", "/log", "/distributed/write"])
@pytest.mark.parametrize("key", [5, None, ["k"], {"k": 1}], ids=["int", "null", "list", "object"])
def test_a_node_key_that_is_not_a_string_is_no_node_key(
    cluster: QuarryCluster, path: str, key: object
) -> None:
    assert post(cluster, path, orjson.dumps({"node_key": key})).json() == {"node_invalid": True}


# --- property-based: random bodies shaped like each endpoint's ----------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ENDPOINT_FIELDS = {
    "/api/v1/osquery/enroll": ("enroll_secret", "host_identifier", "platform_type", "host_details"),
    "/api/v1/osquery/config": ("node_key",),
    "/api/v1/osquery/log": ("node_key", "log_type", "data"),
    "/api/v1/osquery/distributed/read": ("node_key",),
    "/api/v1/osquery/distributed/write": ("node_key", "queries", "statuses", "messages", "stats"),
    "/api/v1/osquery/carve/begin": ("node_key", "block_count", "block_size", "carve_size",
                                    "carve_id", "request_id"),
    "/api/v1/osquery/carve/block": ("block_id", "session_id", "request_id", "data"),
}  # fmt: skip


def endpoint_bodies(fields: tuple[str, ...], key: str) -> st.SearchStrategy[dict]:
    """Each known field absent, a random value, or (node_key) a valid key; extra members too."""
    known = st.fixed_dictionaries(
        {},
        optional={
            name: (st.just(key) | json_values) if name == "node_key" else json_values
            for name in fields
        },
    )
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=3)
    return st.tuples(extra, known).map(lambda parts: {**parts[0], **parts[1]})


@pytest.mark.parametrize("path", list(ENDPOINT_FIELDS))
def test_random_bodies_always_get_a_json_object_and_no_server_error(
    cluster: QuarryCluster, path: str
) -> None:
    key = node_key(cluster)
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    with httpx.Client(base_url=f"https://{cluster.gateway}", verify=context, timeout=30) as http:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(body=endpoint_bodies(ENDPOINT_FIELDS[path], key))
        def answers_with_an_object(body: dict) -> None:
            response = http.post(path, content=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))
            assert response.status_code != 500, response.text
            assert isinstance(response.json(), dict)
            assert "Traceback" not in response.text

        answers_with_an_object()
    assert_still_serving(cluster)


def test_a_distributed_write_with_no_answers_is_answered_at_once(cluster: QuarryCluster) -> None:
    """`queries: {}` carries no answer to record: the write must not wait for one (it used
    to wait until some other node's delivery flushed, past the client's timeout)."""
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    with httpx.Client(base_url=f"https://{cluster.gateway}", verify=context, timeout=5) as http:
        for _ in range(3):
            response = http.post(
                "/api/v1/osquery/distributed/write",
                content=orjson.dumps({"node_key": node_key(cluster), "queries": {}}),
            )
            assert response.json() == {}


# --- bounded fuzz of the decoding functions, in-process ------------------------------------

LIMITS = BodyLimits(
    max_bytes=1 << 20,
    max_decompressed_bytes=4096,
    max_values=500,
    max_string_chars=200,
    timeout_s=1.0,
)


def inflate(data: bytes, max_bytes: int, pieces: int) -> bytes:
    inflater = GzipInflater(max_bytes)
    step = max(1, len(data) // pieces)
    out = [inflater.feed(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join(out) + inflater.finish()


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=8192), pieces=st.integers(1, 50), level=st.integers(0, 9))
def test_gzip_inflation_matches_gzip_or_refuses_past_the_limit(
    payload: bytes, pieces: int, level: int
) -> None:
    compressed = gzip.compress(payload, compresslevel=level)
    if len(payload) <= LIMITS.max_decompressed_bytes:
        assert inflate(compressed, LIMITS.max_decompressed_bytes, pieces) == payload
    else:
        with pytest.raises(BadRequest) as refusal:
            inflate(compressed, LIMITS.max_decompressed_bytes, pieces)
        assert refusal.value.reason == DECOMPRESSED_TOO_LARGE


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=2048), pieces=st.integers(1, 20))
def test_gzip_inflation_of_random_bytes_refuses_cleanly(garbage: bytes, pieces: int) -> None:
    try:
        inflated = inflate(garbage, LIMITS.max_decompressed_bytes, pieces)
    except BadRequest as refusal:
        assert refusal.reason in (BAD_GZIP, DECOMPRESSED_TOO_LARGE)
    else:
        assert inflated == gzip.decompress(garbage) if garbage.strip(b"\0") else inflated == b""


def test_inflation_never_produces_more_than_the_limit_at_once() -> None:
    inflater = GzipInflater(1 << 20)
    bomb = gzip_bomb(64 << 20)
    produced = 0
    with pytest.raises(BadRequest):
        for start in range(0, len(bomb), 4096):
            produced += len(inflater.feed(bomb[start : start + 4096]))
    assert produced <= 1 << 20


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2048))
def test_json_decoding_of_random_bytes_gives_an_object_or_a_refusal(raw: bytes) -> None:
    try:
        assert isinstance(parse_json_object(raw, LIMITS), dict)
    except BadRequest as refusal:
        assert refusal.reason in REFUSAL_REASONS


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=20), json_values, max_size=6))
def test_json_decoding_of_objects_within_the_limits_returns_them(body: dict) -> None:
    raw = orjson.dumps(body)
    try:
        parsed = parse_json_object(raw, LIMITS)
    except BadRequest as refusal:
        assert refusal.reason in ("too_many_values", "string_too_long")
        assert len(raw) > min(LIMITS.max_values, LIMITS.max_string_chars)
    else:
        assert parsed == orjson.loads(raw)


def test_zlib_streams_that_are_not_gzip_are_refused() -> None:
    with pytest.raises(BadRequest) as refusal:
        inflate(zlib.compress(b"{}"), 4096, 1)
    assert refusal.value.reason == BAD_GZIP


# --- enrollment abuse ----------------------------------------------------------------------

SECRET = "hostile-input-secret"


@pytest.fixture(scope="module")
def enroll_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {
        "QUARRY_ENROLL_SECRET": SECRET,
        "QUARRY_ENROLL_RATE_PER_ADDRESS_S": "0.001",
        "QUARRY_ENROLL_BURST_PER_ADDRESS": "3",
        "QUARRY_ENROLL_RATE_PER_SECRET_S": "0.001",
        "QUARRY_ENROLL_BURST_PER_SECRET": "4",
    }
    service = ServiceProcess(
        "enroll", tmp_path_factory.mktemp("enroll-abuse"), free_port_base(), env
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def enroll_from(
    service: ServiceProcess, address: str, secret: str, name: str
) -> enroll_pb2.EnrollResponse:
    with service.channel() as channel:
        return enroll_pb2_grpc.EnrollServiceStub(channel).Enroll(
            enroll_pb2.EnrollRequest(
                enroll_secret=secret,
                host_identifier=name,
                platform_type="9",
                remote_addr=address,
            ),
            timeout=10,
        )


def enroll_metric(service: ServiceProcess, outcome: str) -> float:
    port = service.settings.metrics_port("enroll")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sample = f'quarry_enroll_enrollments_total{{outcome="{outcome}"}}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample)
    )


def stored_state(service: ServiceProcess) -> tuple[int, int]:
    with service.channel() as channel:
        stub = enroll_pb2_grpc.EnrollServiceStub(channel)
        nodes = stub.ListNodes(enroll_pb2.ListNodesRequest(), timeout=10).nodes
        secrets = stub.ListSecrets(
            enroll_pb2.ListSecretsRequest(include_inactive=True), timeout=10
        ).secrets
    return len(nodes), len(secrets)


def test_one_address_is_limited_whatever_the_secret(enroll_service: ServiceProcess) -> None:
    address = "203.0.113.7"
    answers = [
        enroll_from(enroll_service, address, secret, f"flood-{i}")
        for i, secret in enumerate(["wrong-1", SECRET, "wrong-2", SECRET, SECRET])
    ]
    assert [a.reason for a in answers[:3]] == ["invalid enroll secret", "", "invalid enroll secret"]
    assert answers[1].ok
    for late in answers[3:]:
        assert not late.ok
        assert late.reason == "enrollment rate limit exceeded; retry later"
    assert enroll_metric(enroll_service, "rate_limited") >= 2
    # Another address, and the machine itself, are not held back by this one.
    assert enroll_from(enroll_service, "203.0.113.8", SECRET, "neighbour").ok
    assert enroll_from(enroll_service, "127.0.0.1", SECRET, "local").ok


def test_one_secret_is_limited_across_addresses(enroll_service: ServiceProcess) -> None:
    # Two enrollments with SECRET happened in the test above; the bucket holds 4.
    answers = [
        enroll_from(enroll_service, f"198.51.100.{i}", SECRET, f"spread-{i}") for i in range(4)
    ]
    assert [a.ok for a in answers] == [True, True, False, False]
    assert answers[-1].reason == "enrollment rate limit exceeded; retry later"


def test_a_wrong_secret_never_creates_state(enroll_service: ServiceProcess) -> None:
    before = stored_state(enroll_service)
    for i in range(30):
        answer = enroll_from(enroll_service, f"192.0.2.{i}", f"guess-{i}", f"intruder-{i}")
        assert not answer.ok and answer.reason == "invalid enroll secret"
    assert stored_state(enroll_service) == before


def test_enroll_refusals_reach_the_node_as_json(cluster: QuarryCluster) -> None:
    answer = post(cluster, "/enroll", orjson.dumps({"enroll_secret": "nope"})).json()
    assert answer == {"node_invalid": True, "error": "invalid enroll secret"}
