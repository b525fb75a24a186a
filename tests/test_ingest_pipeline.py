"""The ingest service end to end: a real process, a real ZeroMQ DEALER, real ClickHouse.

Each backend (embedded chdb, and a real ClickHouse server) gets one ingest process for the
whole module. Batches go in the way the gateway sends them, several in flight at once; the
tests check the acks and then read the rows back through the LogStore gRPC service (and,
for the server, straight from ClickHouse).
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest
import zmq
from clickhouse_driver import Client

from protos.v1 import logs_pb2, logs_pb2_grpc
from tests.free_ports import free_port_base
from tests.service_processes import ServiceProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
ACK_TIMEOUT_S = 30.0
PORTS_PER_CLUSTER = 15

HOST = "web-01"
EVENT_RECORDS = [
    {
        "name": "pack_osquery-monitoring_osquery_info",
        "hostIdentifier": "web-01",
        "calendarTime": "Sun Jan  5 10:20:30 2025 UTC",
        "unixTime": 1736072430,
        "epoch": 0,
        "counter": 0,
        "numerics": False,
        "decorations": {"host_uuid": "4c4c4544-0042", "username": "alice"},
        "columns": {"pid": "3521", "version": "5.23.1"},
        "action": "added",
    },
    {
        "name": "processes",
        "hostIdentifier": "web-01",
        "calendarTime": "Sun Jan  5 10:25:30 2025 UTC",
        "unixTime": 1736072730,
        "epoch": 0,
        "counter": 3,
        "numerics": False,
        "columns": {"name": "osqueryd", "path": "/opt/osquery/bin/osqueryd", "pid": "97650"},
        "action": "removed",
    },
]
BATCH_FORMAT_RECORD = {
    "diffResults": {
        "removed": [{"name": "osqueryd", "pid": "97650"}],
        "added": [{"name": "osqueryd", "pid": "97830"}],
    },
    "name": "processes_batch",
    "hostIdentifier": "web-01",
    "calendarTime": "Sun Jan  5 10:25:30 2025 UTC",
    "unixTime": 1736072730,
    "epoch": 0,
    "counter": 3,
    "numerics": False,
}
SNAPSHOT_RECORD = {
    "snapshot": [
        {"parent": "0", "path": "/sbin/launchd", "pid": "1"},
        {"parent": "1", "path": "/usr/sbin/syslogd", "pid": "51"},
    ],
    "action": "snapshot",
    "name": "process_snapshot",
    "hostIdentifier": "web-01",
    "calendarTime": "Sun Jan  5 10:20:30 2025 UTC",
    "unixTime": 1736072430,
    "epoch": 0,
    "counter": 0,
    "numerics": False,
}
STATUS_RECORDS = [
    {
        "hostIdentifier": "web-01",
        "calendarTime": "Sun Jan  5 10:20:30 2025 UTC",
        "unixTime": 1736072430,
        "severity": 0,
        "filename": "query.cpp",
        "line": 119,
        "message": "Storing initial results for new scheduled query: processes",
        "version": "5.23.1",
        "decorations": {"username": "alice"},
    },
    {
        "hostIdentifier": "web-01",
        "calendarTime": "Sun Jan  5 10:20:31 2025 UTC",
        "unixTime": "1736072431",
        "severity": "1",
        "filename": "distributed.cpp",
        "line": "352",
        "message": "pre-5.10 status line",
        "version": "5.9.1",
    },
]


@dataclass
class IngestProcess:
    service: ServiceProcess
    zmq_endpoint: str
    grpc_addr: str
    clickhouse_url: str
    metrics_url: str


# Fixtures


@pytest.fixture(scope="module")
def ingest(log_store_url: str, tmp_path_factory: pytest.TempPathFactory):
    """One ingest process per backend: chdb, and the session's ClickHouse server."""
    with run_ingest(tmp_path_factory.mktemp("ingest"), log_store_url) as process:
        yield process


@pytest.fixture
def dealer(ingest: IngestProcess) -> Iterator[zmq.Socket]:
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ingest.zmq_endpoint)
    yield sock
    sock.close()


# Helpers


@contextmanager
def run_ingest(
    state_dir: Path, clickhouse_url: str, flush_interval_s: float = 0.05, **settings: str
) -> Iterator[IngestProcess]:
    """An ingest process; `settings` are further Settings fields, e.g. ingest_spool_max_bytes."""
    env = {
        "QUARRY_CLICKHOUSE_URL": clickhouse_url,
        "QUARRY_INGEST_FLUSH_INTERVAL_S": str(flush_interval_s),
        **{f"QUARRY_{name.upper()}": value for name, value in settings.items()},
    }
    service = ServiceProcess("ingest", state_dir, free_port_base(), env)
    settings = service.settings
    ingest = IngestProcess(
        service,
        settings.zmq_endpoints()[0],
        settings.service_addr("ingest"),
        clickhouse_url,
        f"http://127.0.0.1:{settings.metrics_port('ingest')}/metrics",
    )
    try:
        service.start()
        wait_until_serving(ingest)
        yield ingest
    finally:
        service.stop()


def wait_until_serving(ingest: IngestProcess) -> None:
    """Listening is not enough: the store must answer (chdb opens, schema exists)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ingest.service.returncode is not None:
            raise RuntimeError(f"ingest exited early:\n{ingest.service.log_text()}")
        try:
            query(ingest, "SELECT 1")
            return
        except grpc.RpcError:
            time.sleep(0.1)
    raise RuntimeError(f"ingest not serving:\n{ingest.service.log_text()}")


def query(ingest: IngestProcess, sql: str) -> logs_pb2.SqlResponse:
    with ingest.service.channel() as channel:
        stub = logs_pb2_grpc.LogStoreStub(channel)
        return stub.Query(logs_pb2.SqlRequest(sql=sql), timeout=10)


def query_rows(ingest: IngestProcess, sql: str) -> list[list]:
    response = query(ingest, sql)
    assert response.error == ""
    return [orjson.loads(row) for row in response.rows_json]


def make_batch(
    kind: int, records: object, batch_id: str = "", campaign_id: str = ""
) -> logs_pb2.LogBatch:
    return logs_pb2.LogBatch(
        batch_id=batch_id or uuid.uuid4().hex,
        kind=kind,
        node_id="node-1",
        host_identifier=HOST,
        received_at=1736072440,
        data_json=orjson.dumps(records),
        campaign_id=campaign_id,
    )


def send_frames(dealer: zmq.Socket, frames: list[bytes]) -> list[logs_pb2.LogAck]:
    """Send all frames at once (pipelined), then collect one ack per frame, in send order."""
    correlation_ids = [uuid.uuid4().bytes[:8] for _ in frames]
    for correlation_id, frame in zip(correlation_ids, frames, strict=True):
        dealer.send_multipart([correlation_id, frame])
    acks: dict[bytes, logs_pb2.LogAck] = {}
    while len(acks) < len(frames):
        assert dealer.poll(int(ACK_TIMEOUT_S * 1000)), f"only {len(acks)} acks arrived"
        # One message may carry several [correlation id, LogAck] pairs.
        pairs = dealer.recv_multipart()
        for index in range(0, len(pairs), 2):
            acks[pairs[index]] = logs_pb2.LogAck.FromString(pairs[index + 1])
    return [acks[correlation_id] for correlation_id in correlation_ids]


def send_batches(dealer: zmq.Socket, batches: list[logs_pb2.LogBatch]) -> list[logs_pb2.LogAck]:
    return send_frames(dealer, [batch.SerializeToString() for batch in batches])


def column(name: str) -> str:
    """SQL for one result column that works on ClickHouse 18.16 and modern servers alike."""
    return f"column_values[indexOf(column_names, '{name}')]"


# Tests


def test_every_result_format_becomes_one_row_per_result_row(
    ingest: IngestProcess, dealer: zmq.Socket
) -> None:
    snapshot_events = [
        {**EVENT_RECORDS[0], "name": "snap_events", "action": "snapshot"},
    ]
    batches = [
        make_batch(logs_pb2.RESULT, EVENT_RECORDS),
        make_batch(logs_pb2.RESULT, [BATCH_FORMAT_RECORD]),
        make_batch(logs_pb2.RESULT, [SNAPSHOT_RECORD]),
        make_batch(logs_pb2.RESULT, snapshot_events),
        make_batch(logs_pb2.RESULT, [{**SNAPSHOT_RECORD, "snapshot": []}]),
    ]
    acks = send_batches(dealer, batches)

    assert [(ack.ok, ack.rows, ack.error) for ack in acks] == [
        (True, 2, ""),
        (True, 2, ""),
        (True, 2, ""),
        (True, 1, ""),
        (True, 0, ""),
    ]
    assert [ack.batch_id for ack in acks] == [batch.batch_id for batch in batches]
    ids = ", ".join(f"'{batch.batch_id}'" for batch in batches)
    rows = query_rows(
        ingest,
        f"SELECT name, action, {column('pid')}, host_identifier, node_id, unix_time, counter "
        f"FROM results WHERE batch_id IN ({ids}) ORDER BY name, action, {column('pid')}",
    )
    assert rows == [
        ["pack_osquery-monitoring_osquery_info", "added", "3521", HOST, "node-1",
         "2025-01-05 10:20:30", 0],
        ["process_snapshot", "snapshot", "1", HOST, "node-1", "2025-01-05 10:20:30", 0],
        ["process_snapshot", "snapshot", "51", HOST, "node-1", "2025-01-05 10:20:30", 0],
        ["processes", "removed", "97650", HOST, "node-1", "2025-01-05 10:25:30", 3],
        ["processes_batch", "added", "97830", HOST, "node-1", "2025-01-05 10:25:30", 3],
        ["processes_batch", "removed", "97650", HOST, "node-1", "2025-01-05 10:25:30", 3],
        ["snap_events", "snapshot", "3521", HOST, "node-1", "2025-01-05 10:20:30", 0],
    ]  # fmt: skip


def test_decorations_and_full_columns_are_kept(ingest: IngestProcess, dealer: zmq.Socket) -> None:
    batch = make_batch(logs_pb2.RESULT, EVENT_RECORDS[:1])
    [ack] = send_batches(dealer, [batch])
    assert ack.ok

    rows = query_rows(
        ingest,
        "SELECT column_names, column_values, decoration_names, decoration_values, "
        f"calendar_time, received_at FROM results WHERE batch_id = '{batch.batch_id}'",
    )
    assert rows == [
        [
            ["pid", "version"],
            ["3521", "5.23.1"],
            ["host_uuid", "username"],
            ["4c4c4544-0042", "alice"],
            "Sun Jan  5 10:20:30 2025 UTC",
            "2025-01-05 10:20:40",
        ]
    ]


def test_status_logs_with_numbers_and_pre_510_strings(
    ingest: IngestProcess, dealer: zmq.Socket
) -> None:
    batch = make_batch(logs_pb2.STATUS, STATUS_RECORDS)
    [ack] = send_batches(dealer, [batch])
    assert (ack.ok, ack.rows) == (True, 2)

    rows = query_rows(
        ingest,
        "SELECT unix_time, severity, filename, line, message, version, decoration_values "
        f"FROM status_logs WHERE batch_id = '{batch.batch_id}' ORDER BY unix_time",
    )
    assert rows == [
        ["2025-01-05 10:20:30", 0, "query.cpp", 119, STATUS_RECORDS[0]["message"], "5.23.1",
         ["alice"]],
        ["2025-01-05 10:20:31", 1, "distributed.cpp", 352, "pre-5.10 status line", "5.9.1", []],
    ]  # fmt: skip


def test_distributed_rows_keep_campaign_and_order(
    ingest: IngestProcess, dealer: zmq.Socket
) -> None:
    campaign_id = uuid.uuid4().hex
    answer = [{"version": "5.23.1", "build_platform": "linux"}, {"version": "5.9.1"}]
    batch = make_batch(logs_pb2.DISTRIBUTED, answer, campaign_id=campaign_id)
    [ack] = send_batches(dealer, [batch])
    assert (ack.ok, ack.rows) == (True, 2)

    rows = query_rows(
        ingest,
        f"SELECT row_index, {column('version')}, column_names, host_identifier "
        f"FROM distributed_results WHERE campaign_id = '{campaign_id}' ORDER BY row_index",
    )
    assert rows == [
        [0, "5.23.1", ["version", "build_platform"], HOST],
        [1, "5.9.1", ["version"], HOST],
    ]


def test_the_same_batch_twice_is_stored_once(ingest: IngestProcess, dealer: zmq.Socket) -> None:
    batch = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    # Two copies in flight together (coalesced while pending), then a late re-send.
    together = send_batches(dealer, [batch, batch])
    [late] = send_batches(dealer, [batch])

    assert sorted((ack.ok, ack.duplicate) for ack in together) == [(True, False), (True, True)]
    assert (late.ok, late.duplicate) == (True, True)
    rows = query_rows(ingest, f"SELECT count() FROM results WHERE batch_id = '{batch.batch_id}'")
    assert rows == [[2]]


def test_garbage_gets_a_clear_error_and_the_service_keeps_serving(
    ingest: IngestProcess, dealer: zmq.Socket
) -> None:
    not_json = make_batch(logs_pb2.RESULT, []).SerializeToString()
    not_json_batch = logs_pb2.LogBatch.FromString(not_json)
    not_json_batch.data_json = b"{not json"
    good = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    acks = send_frames(
        dealer,
        [b"\xff\xfe garbage", not_json_batch.SerializeToString(), good.SerializeToString()],
    )

    assert not acks[0].ok
    assert "not a LogBatch protobuf" in acks[0].error
    assert not acks[1].ok
    assert "not valid JSON" in acks[1].error
    assert (acks[2].ok, acks[2].rows) == (True, 2)


def test_a_message_without_pairs_is_answered_and_the_next_one_still_read(
    ingest: IngestProcess, dealer: zmq.Socket
) -> None:
    # A correlation id without its batch: an even number of frames on the ROUTER.
    dealer.send_multipart([b"lonely01"])
    assert dealer.poll(int(ACK_TIMEOUT_S * 1000)), "no answer to a badly framed message"
    correlation_id, raw_ack = dealer.recv_multipart()
    ack = logs_pb2.LogAck.FromString(raw_ack)
    assert (correlation_id, ack.ok) == (b"", False)
    assert "[correlation id, LogBatch] pairs" in ack.error
    good = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    [stored] = send_batches(dealer, [good])
    assert (stored.ok, stored.rows) == (True, 2)


def test_a_malformed_record_is_skipped_and_the_rest_stored(
    ingest: IngestProcess, dealer: zmq.Socket
) -> None:
    batch = make_batch(logs_pb2.RESULT, [42, {"name": "no_rows"}, EVENT_RECORDS[1]])
    [ack] = send_batches(dealer, [batch])

    assert (ack.ok, ack.rows) == (True, 1)
    rows = query_rows(ingest, f"SELECT name FROM results WHERE batch_id = '{batch.batch_id}'")
    assert rows == [["processes"]]


def test_a_failing_query_returns_the_server_message(ingest: IngestProcess) -> None:
    response = query(ingest, "SELECT no_such_column FROM results")
    assert "no_such_column" in response.error
    assert list(response.rows_json) == []


def test_rows_are_in_the_clickhouse_server(ingest: IngestProcess, dealer: zmq.Socket) -> None:
    if not ingest.clickhouse_url:
        pytest.skip("embedded store: no server to read directly")
    batch = make_batch(logs_pb2.RESULT, [SNAPSHOT_RECORD])
    [ack] = send_batches(dealer, [batch])
    assert ack.ok
    query(ingest, "SELECT 1")  # waits until what was acked is replayed into ClickHouse

    client = Client.from_url(ingest.clickhouse_url)
    try:
        rows = client.execute(
            f"SELECT {column('path')} FROM quarry.results "
            f"WHERE batch_id = '{batch.batch_id}' ORDER BY 1"
        )
    finally:
        client.disconnect()
    assert rows == [("/sbin/launchd",), ("/usr/sbin/syslogd",)]


def test_modern_servers_offer_a_columns_map(ingest: IngestProcess, dealer: zmq.Socket) -> None:
    version = query_rows(ingest, "SELECT version()")[0][0]
    if int(version.split(".")[0]) < 23:
        pytest.skip(f"ClickHouse {version} has no Map type")
    batch = make_batch(logs_pb2.RESULT, EVENT_RECORDS[:1])
    [ack] = send_batches(dealer, [batch])
    assert ack.ok

    rows = query_rows(
        ingest,
        "SELECT columns['pid'], decorations['username'] FROM results "
        f"WHERE batch_id = '{batch.batch_id}'",
    )
    assert rows == [["3521", "alice"]]


def pending_rows(ingest: IngestProcess) -> float:
    with urllib.request.urlopen(ingest.metrics_url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("quarry_ingest_pending_rows "):
                return float(line.split()[1])
    raise AssertionError("quarry_ingest_pending_rows missing from /metrics")


def test_sigterm_flushes_pending_batches_before_exit(tmp_path: Path) -> None:
    batch = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    context = zmq.Context.instance()
    # A flush interval far longer than the test: only the shutdown flush can store the batch.
    with run_ingest(tmp_path, clickhouse_url="", flush_interval_s=3600) as ingest:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(ingest.zmq_endpoint)
        try:
            dealer.send_multipart([b"corr-001", batch.SerializeToString()])
            while pending_rows(ingest) < 2:
                time.sleep(0.05)
            ingest.service.terminate()
            assert dealer.poll(int(ACK_TIMEOUT_S * 1000)), "no ack after SIGTERM"
            correlation_id, ack_frame = dealer.recv_multipart()
        finally:
            dealer.close()
        assert ingest.service.stop() == 0
    ack = logs_pb2.LogAck.FromString(ack_frame)
    assert (correlation_id, ack.ok, ack.rows) == (b"corr-001", True, 2)

    with run_ingest(tmp_path, clickhouse_url="") as restarted:
        rows = query_rows(
            restarted, f"SELECT count() FROM results WHERE batch_id = '{batch.batch_id}'"
        )
    assert rows == [[2]]


def test_unreachable_clickhouse_is_acked_once_spooled(tmp_path: Path) -> None:
    closed_port = free_port_base()
    url = f"clickhouse://default:@127.0.0.1:{closed_port}/quarry"
    with run_ingest(tmp_path, clickhouse_url=url) as ingest:
        context = zmq.Context.instance()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(ingest.zmq_endpoint)
        try:
            acks = send_batches(
                dealer,
                [make_batch(logs_pb2.RESULT, EVENT_RECORDS), make_batch(logs_pb2.STATUS, [])],
            )
        finally:
            dealer.close()

    # Spooled and fsynced is durable: acked while ClickHouse is away, replayed later
    # (tests/test_spool.py covers the replay and the refusal once the spool is full).
    assert (acks[0].ok, acks[0].rows) == (True, 2)
    assert (acks[1].ok, acks[1].rows) == (True, 0)  # nothing to store is stored


def test_raw_batches_are_kept_once_when_asked(log_store_url: str, tmp_path: Path) -> None:
    result = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    status = make_batch(logs_pb2.STATUS, STATUS_RECORDS)
    with run_ingest(tmp_path, log_store_url, ingest_keep_raw_batches="true") as ingest:
        context = zmq.Context.instance()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(ingest.zmq_endpoint)
        try:
            acks = send_batches(dealer, [result, status, result])
        finally:
            dealer.close()
        ids = f"'{result.batch_id}', '{status.batch_id}'"
        raw = query_rows(
            ingest,
            f"SELECT batch_id, kind, host_identifier, data_json FROM raw_batches "
            f"WHERE batch_id IN ({ids}) ORDER BY kind",
        )

    assert all(ack.ok for ack in acks)
    assert raw == [
        [result.batch_id, "result", HOST, result.data_json.decode()],
        [status.batch_id, "status", HOST, status.data_json.decode()],
    ]


def test_raw_batches_are_not_kept_by_default(ingest: IngestProcess, dealer: zmq.Socket) -> None:
    batch = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    [ack] = send_batches(dealer, [batch])

    assert (ack.ok, ack.rows) == (True, 2)
    where = f"WHERE batch_id = '{batch.batch_id}'"
    assert query_rows(ingest, f"SELECT count() FROM results {where}") == [[2]]
    assert query_rows(ingest, f"SELECT count() FROM raw_batches {where}") == [[0]]
