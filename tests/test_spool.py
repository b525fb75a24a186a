"""The ingest spool: the disk format on its own, then the ingest process through faults.

The unit tests drive `Spool` in a temporary directory (append, read, checkpoint, rotation,
retention, torn and corrupt records, a failing write, and the id indexes that rebuild the
de-duplication window at start-up: whole, missing, torn or corrupt). The process tests run the
real ingest service against a private ClickHouse server they can stop and start, and check that
what was acked ends up in ClickHouse exactly once: across a ClickHouse outage, a SIGKILL, a crash
between insert and checkpoint, a full spool, and a duplicate re-sent after a restart.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
from clickhouse_driver import Client

from ingest_service.group_commit import recent_ids_from_spool
from ingest_service.spool import HEADER, INDEX_ENTRY_HEADER, Position, Spool
from protos.v1 import logs_pb2
from tests.clickhouse_server import (
    CONFIG_TEMPLATE,
    SERVER_BINARY,
    USERS_CONFIG,
    free_port,
    wait_until_ready,
)
from tests.test_ingest_pipeline import (
    EVENT_RECORDS,
    IngestProcess,
    make_batch,
    run_ingest,
    send_batches,
)

BIG_SEGMENT = 1 << 20
HOUR = 3600.0
# Generous: only a broken replay takes this long.
ARRIVAL_TIMEOUT_S = 90.0


# Unit tests of the spool


def open_spool(directory: Path, segment_bytes: int = BIG_SEGMENT, retention_s: float = HOUR):
    return Spool(directory, segment_bytes, retention_s)


def payloads(spool: Spool, position: Position | None = None) -> list[bytes]:
    start = spool.checkpoint if position is None else position
    return [record.payload for record in spool.read_from(start)]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def index_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.ids"))


def test_records_come_back_in_order_and_the_checkpoint_survives_a_reopen(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path)
    first = spool.append([b"one", b"two"])
    spool.append([b"three"])
    assert payloads(spool) == [b"one", b"two", b"three"]
    assert spool.unreplayed_records() == 3
    assert spool.unreplayed_bytes() == 3 * HEADER.size + len(b"onetwothree")

    records = list(spool.read_from(first[0], limit=2))
    spool.commit(records[-1].next_position, len(records))
    assert payloads(spool) == [b"three"]
    assert spool.unreplayed_bytes() == HEADER.size + len(b"three")
    spool.close()

    reopened = open_spool(tmp_path)
    assert payloads(reopened) == [b"three"]
    assert reopened.unreplayed_records() == 1
    assert reopened.oldest_unreplayed_age_s() >= 0
    reopened.append([b"four"])
    assert payloads(reopened) == [b"three", b"four"]
    reopened.close()


def test_segments_rotate_and_fully_replayed_ones_expire(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=64, retention_s=0)
    for index in range(6):
        spool.append([b"x" * 60 + bytes([index])])
    assert len(segment_files(tmp_path)) == 6
    assert len(payloads(spool)) == 6

    records = list(spool.read_from(spool.checkpoint))
    spool.commit(records[3].next_position, 4)
    # Segments wholly before the checkpoint are gone; the rest is still readable.
    assert len(segment_files(tmp_path)) == 3
    assert payloads(spool) == [b"x" * 60 + bytes([4]), b"x" * 60 + bytes([5])]
    assert spool.unreplayed_records() == 2
    spool.close()


def test_replayed_segments_are_kept_for_the_retention_window_and_remember_batch_ids(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path, segment_bytes=64)
    batches = [make_batch(logs_pb2.RESULT, EVENT_RECORDS) for _ in range(3)]
    positions = spool.append([batch.SerializeToString() for batch in batches])
    end = list(spool.read_from(positions[0]))[-1].next_position
    spool.commit(end, 3)
    spool.close()

    reopened = open_spool(tmp_path, segment_bytes=64)
    assert reopened.unreplayed_records() == 0
    assert reopened.oldest_unreplayed_age_s() == 0
    recent = recent_ids_from_spool(reopened)
    assert all(batch.batch_id in recent for batch in batches)
    reopened.close()


def test_a_torn_tail_is_ignored_and_truncated_on_recovery(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append([b"kept-1", b"kept-2"])
    spool.close()
    [segment] = segment_files(tmp_path)
    good_size = segment.stat().st_size
    with open(segment, "ab") as out:  # a crash in the middle of the next record
        out.write(HEADER.pack(1000, 0, 0) + b"half a rec")

    reopened = open_spool(tmp_path)
    assert payloads(reopened) == [b"kept-1", b"kept-2"]
    assert segment.stat().st_size == good_size
    assert reopened.unreplayed_records() == 2
    reopened.close()


def test_a_record_with_a_bad_crc_is_not_replayed(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append([b"good"])
    spool.append([b"will be damaged"])
    spool.close()
    [segment] = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))

    reopened = open_spool(tmp_path)
    assert payloads(reopened) == [b"good"]
    reopened.close()


def test_a_failed_write_raises_and_leaves_no_partial_record(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append([b"before"])
    [segment] = segment_files(tmp_path)
    limit = segment.stat().st_size + 10
    # A file size limit makes the write fail like a full disk (EFBIG instead of ENOSPC).
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(OSError):
            spool.append([b"y" * 100])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)

    spool.append([b"after"])
    assert payloads(spool) == [b"before", b"after"]
    spool.close()


# The id indexes: the de-duplication window rebuilt without reading the segments


SMALL_SEGMENT = 256


def append_ids(spool: Spool, ids: list[str]) -> None:
    """Append one record per id whose payload is the id itself, indexing the ids."""
    spool.append([batch_id.encode() for batch_id in ids], ids)


def ids_after_restart(directory: Path) -> tuple[list[str], list[str]]:
    """Reopen the spool and rebuild its ids: (all ids, the ones read from segments instead)."""
    read_from_segments: list[str] = []

    def id_of_payload(payload: bytes) -> str:
        read_from_segments.append(payload.decode())
        return payload.decode()

    spool = open_spool(directory, segment_bytes=SMALL_SEGMENT)
    try:
        return list(spool.record_ids(id_of_payload)), read_from_segments
    finally:
        spool.close()


def numbered_ids(count: int, prefix: str = "batch") -> list[str]:
    return [f"{prefix}-{index:04d}" for index in range(count)]


def test_the_ids_rebuilt_at_start_are_the_ids_appended_without_reading_segments(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path, segment_bytes=SMALL_SEGMENT)
    ids = numbered_ids(60)
    for group in range(0, 60, 7):
        append_ids(spool, ids[group : group + 7])
    spool.close()
    assert len(segment_files(tmp_path)) > 3
    assert [path.stem for path in index_files(tmp_path)] == [
        path.stem for path in segment_files(tmp_path)
    ]

    rebuilt, read_from_segments = ids_after_restart(tmp_path)
    assert rebuilt == ids
    assert read_from_segments == []
    # A second restart appends to a new segment; both generations come back.
    reopened = open_spool(tmp_path, segment_bytes=SMALL_SEGMENT)
    append_ids(reopened, ["after-restart"])
    reopened.close()
    assert ids_after_restart(tmp_path) == ([*ids, "after-restart"], [])


def test_the_recent_batch_ids_come_from_the_index_and_from_unindexed_records(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path)
    groups = [[make_batch(logs_pb2.RESULT, EVENT_RECORDS) for _ in range(2)] for _ in range(3)]
    indexed, unindexed, indexed_again = groups
    spool.append([b.SerializeToString() for b in indexed], [b.batch_id for b in indexed])
    # The old call, without ids: these records (and the index after them) are parsed instead.
    spool.append([b.SerializeToString() for b in unindexed])
    spool.append(
        [b.SerializeToString() for b in indexed_again], [b.batch_id for b in indexed_again]
    )
    spool.close()
    assert len(segment_files(tmp_path)) == 1

    reopened = open_spool(tmp_path)
    recent = recent_ids_from_spool(reopened)
    assert list(recent.ids) == [b.batch_id for b in indexed + unindexed + indexed_again]
    reopened.close()


def test_a_missing_index_means_reading_that_segment(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=SMALL_SEGMENT)
    ids = numbered_ids(30)
    for group in range(0, 30, 5):
        append_ids(spool, ids[group : group + 5])
    spool.close()
    lost_index = index_files(tmp_path)[1]
    lost_index.unlink()

    rebuilt, read_from_segments = ids_after_restart(tmp_path)
    assert rebuilt == ids
    assert read_from_segments == [
        payload.decode() for payload in payloads_of_segment(tmp_path, lost_index.stem)
    ]
    assert read_from_segments


def payloads_of_segment(directory: Path, stem: str) -> list[bytes]:
    spool = open_spool(directory, segment_bytes=SMALL_SEGMENT)
    try:
        number = int(stem)
        return [r.payload for r in spool.read_segment(number, 0, spool.sizes[number])]
    finally:
        spool.close()


def test_a_torn_index_tail_is_trusted_only_up_to_the_last_whole_entry(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ids = numbered_ids(10)
    append_ids(spool, ids)
    spool.close()
    [index] = index_files(tmp_path)
    entry_size = INDEX_ENTRY_HEADER + len(ids[0])
    # As if the machine lost power while the (never fsynced) index was being written.
    with open(index, "r+b") as out:
        out.truncate(6 * entry_size + 5)

    rebuilt, read_from_segments = ids_after_restart(tmp_path)
    assert rebuilt == ids
    assert read_from_segments == ids[6:]


def test_a_corrupt_index_entry_is_never_taken_for_an_id(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ids = numbered_ids(10)
    append_ids(spool, ids)
    spool.close()
    [index] = index_files(tmp_path)
    entry_size = INDEX_ENTRY_HEADER + len(ids[0])
    data = bytearray(index.read_bytes())
    data[3 * entry_size + INDEX_ENTRY_HEADER] ^= ord("b") ^ ord("X")  # batch-0003 -> Xatch-0003
    data += b"\0" * 64  # and zeros after the end, as a crashed file system may leave
    index.write_bytes(bytes(data))

    rebuilt, read_from_segments = ids_after_restart(tmp_path)
    assert rebuilt == ids
    assert read_from_segments == ids[3:]


def test_records_fsynced_but_not_indexed_before_a_crash_are_read(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ids = numbered_ids(8)
    append_ids(spool, ids[:5])
    [index] = index_files(tmp_path)
    indexed_part = index.read_bytes()
    append_ids(spool, ids[5:])
    spool.close()
    [segment] = segment_files(tmp_path)
    # The process died after the fsync of the second group, before its index entries, and in
    # the middle of writing a third group.
    index.write_bytes(indexed_part)
    with open(segment, "ab") as out:
        out.write(HEADER.pack(1000, 0, 0) + b"half a rec")

    rebuilt, read_from_segments = ids_after_restart(tmp_path)
    assert rebuilt == ids
    assert read_from_segments == ids[5:]


def test_index_entries_past_the_end_of_a_truncated_segment_are_dropped(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    ids = numbered_ids(6)
    positions = spool.append([batch_id.encode() for batch_id in ids], ids)
    spool.close()
    [segment] = segment_files(tmp_path)
    # The last two records cut off (one of them half-way): their ids must not come back.
    with open(segment, "r+b") as out:
        out.truncate(positions[4].offset + 3)

    rebuilt, read_from_segments = ids_after_restart(tmp_path)
    assert rebuilt == ids[:4]
    assert read_from_segments == []


def test_an_append_with_the_wrong_number_of_ids_writes_nothing(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    with pytest.raises(ValueError, match="2 ids for 3 payloads"):
        spool.append([b"a", b"b", b"c"], ["a", "b"])
    assert payloads(spool) == []
    spool.close()


def test_expired_segments_take_their_index_with_them(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=64, retention_s=0)
    ids = [f"{index:060d}" for index in range(6)]
    for batch_id in ids:
        append_ids(spool, [batch_id])
    assert len(index_files(tmp_path)) == 6

    records = list(spool.read_from(spool.checkpoint))
    spool.commit(records[3].next_position, 4)
    assert len(segment_files(tmp_path)) == 3
    assert [p.stem for p in index_files(tmp_path)] == [p.stem for p in segment_files(tmp_path)]
    # The checkpoint sits at the end of record 3's segment, which is kept.
    assert list(spool.record_ids(bytes.decode)) == ids[3:]
    spool.close()

    # An index whose segment went away in a crash between the two deletions goes at start.
    orphan = tmp_path / "000000000001.ids"
    orphan.write_bytes(b"left behind")
    reopened = open_spool(tmp_path, segment_bytes=64, retention_s=0)
    assert not orphan.exists()
    assert list(reopened.record_ids(bytes.decode)) == ids[3:]
    reopened.close()


# Process tests: the ingest service against a ClickHouse server that can be stopped


class StoppableClickHouse:
    """A private clickhouse-server whose data survives stop() and start() on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tcp_port, self.http_port = free_port(), free_port()
        for sub in ("log", "data", "tmp", "user_files", "format_schemas"):
            (root / sub).mkdir()
        self.config = root / "config.xml"
        self.config.write_text(
            CONFIG_TEMPLATE.format(
                root=root,
                tcp_port=self.tcp_port,
                http_port=self.http_port,
                interserver_port=free_port(),
                users_config=USERS_CONFIG,
            )
        )
        self.url = f"clickhouse://default:@127.0.0.1:{self.tcp_port}/quarry"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(SERVER_BINARY), f"--config-file={self.config}"],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_ready(self.process, self.http_port, self.root)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None


@pytest.fixture
def clickhouse() -> Iterator[StoppableClickHouse]:
    if not SERVER_BINARY.exists():
        pytest.skip(f"needs {SERVER_BINARY} to stop and start a server")
    with tempfile.TemporaryDirectory(prefix="quarry-spool-clickhouse-") as root:
        server = StoppableClickHouse(Path(root))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def dealer_for(ingest: IngestProcess) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ingest.zmq_endpoint)
    try:
        yield sock
    finally:
        sock.close()


def send(ingest: IngestProcess, batches: list[logs_pb2.LogBatch]) -> list[logs_pb2.LogAck]:
    with dealer_for(ingest) as dealer:
        return send_batches(dealer, batches)


def metric(ingest: IngestProcess, name: str) -> float:
    with urllib.request.urlopen(ingest.metrics_url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


def rows_per_batch(clickhouse_url: str, batch_ids: list[str]) -> dict[str, int]:
    ids = ", ".join(f"'{batch_id}'" for batch_id in batch_ids)
    client = Client.from_url(clickhouse_url)
    try:
        rows = client.execute(
            "SELECT batch_id, count() FROM quarry.results "
            f"WHERE batch_id IN ({ids}) GROUP BY batch_id"
        )
    except Exception:
        return {}  # not there yet (no table, or the server is starting)
    finally:
        client.disconnect()
    return dict(rows)


def wait_for_rows(clickhouse_url: str, expected: dict[str, int]) -> dict[str, int]:
    """Poll until every batch has at least its rows (or give up); return what is stored."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    while True:
        stored = rows_per_batch(clickhouse_url, list(expected))
        if all(stored.get(b, 0) >= rows for b, rows in expected.items()):
            return stored
        if time.monotonic() > deadline:
            return stored
        time.sleep(0.2)


def result_batches(count: int) -> list[logs_pb2.LogBatch]:
    return [make_batch(logs_pb2.RESULT, EVENT_RECORDS) for _ in range(count)]


def test_batches_are_acked_while_clickhouse_is_down_and_arrive_once_it_is_back(
    tmp_path: Path, clickhouse: StoppableClickHouse
) -> None:
    with run_ingest(tmp_path, clickhouse.url) as ingest:
        before = result_batches(3)
        assert all(ack.ok for ack in send(ingest, before))
        wait_for_rows(clickhouse.url, {b.batch_id: 2 for b in before})

        clickhouse.stop()
        during = result_batches(20)
        acks = send(ingest, during)
        assert [(ack.ok, ack.rows) for ack in acks] == [(True, 2)] * 20
        assert metric(ingest, "quarry_ingest_replay_lag_batches") == 20
        assert metric(ingest, "quarry_ingest_spool_unreplayed_bytes") > 0
        assert metric(ingest, "quarry_ingest_spool_appends_total") == 23

        clickhouse.start()
        expected = {b.batch_id: 2 for b in before + during}
        assert wait_for_rows(clickhouse.url, expected) == expected
        # Replayed means checkpointed too: the lag drops to zero.
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while metric(ingest, "quarry_ingest_replay_lag_batches") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(ingest, "quarry_ingest_replay_lag_batches") == 0
        assert metric(ingest, "quarry_ingest_spool_unreplayed_bytes") == 0


def test_replay_backs_off_while_clickhouse_is_down_whatever_keeps_arriving(
    tmp_path: Path, clickhouse: StoppableClickHouse
) -> None:
    """One insert attempt per backoff step (0.1 s doubling to 5 s), not one per batch that
    arrives, and one log line when inserts start failing and one when they work again."""
    with run_ingest(tmp_path, clickhouse.url) as ingest:
        assert all(ack.ok for ack in send(ingest, result_batches(1)))
        clickhouse.stop()
        started = time.monotonic()
        for _ in range(40):
            assert all(ack.ok for ack in send(ingest, result_batches(1)))
            time.sleep(0.1)
        outage_s = time.monotonic() - started
        attempts = metric(ingest, "quarry_ingest_replay_failures_total")
        clickhouse.start()
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while metric(ingest, "quarry_ingest_replay_lag_batches") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(ingest, "quarry_ingest_replay_lag_batches") == 0
        log_text = ingest.service.log_text()
    # The most attempts backoff allows in the outage: 0.1 + 0.2 + 0.4 + ... s between them.
    allowed, waited, step = 1, 0.0, 0.1
    while waited + step <= outage_s:
        allowed, waited, step = allowed + 1, waited + step, min(step * 2, 5.0)
    assert 1 <= attempts <= allowed + 1, (attempts, outage_s)
    assert log_text.count("batches failed: ") == 1, log_text[-3000:]
    assert log_text.count("replay works again") == 1


def test_a_sigkilled_ingest_loses_nothing_acked_and_duplicates_nothing(
    tmp_path: Path, clickhouse_url: str
) -> None:
    acked: dict[str, int] = {}
    with run_ingest(tmp_path, clickhouse_url) as ingest:
        for _ in range(5):
            batches = result_batches(40)
            for batch, ack in zip(batches, send(ingest, batches), strict=True):
                if ack.ok:
                    acked[batch.batch_id] = ack.rows
        ingest.service.kill()  # SIGKILL right after the last acks
        ingest.service.stop()

    with run_ingest(tmp_path, clickhouse_url):
        assert wait_for_rows(clickhouse_url, acked) == acked
    assert len(acked) == 200


def test_a_crash_between_insert_and_checkpoint_does_not_insert_twice(
    tmp_path: Path, clickhouse_url: str
) -> None:
    batches = result_batches(10)
    expected = {b.batch_id: 2 for b in batches}
    with run_ingest(tmp_path, clickhouse_url) as ingest:
        assert all(ack.ok for ack in send(ingest, batches))
        assert wait_for_rows(clickhouse_url, expected) == expected
    # As if the process had died after the inserts but before moving the checkpoint.
    spool_dir = tmp_path / "spool"
    first_segment = int(segment_files(spool_dir)[0].stem)
    (spool_dir / "checkpoint").write_text(f"{first_segment} 0\n")

    with run_ingest(tmp_path, clickhouse_url) as restarted:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while metric(restarted, "quarry_ingest_replay_lag_batches") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert metric(restarted, "quarry_ingest_replay_lag_batches") == 0
        assert rows_per_batch(clickhouse_url, list(expected)) == expected
        assert "already in results, not inserted again" in restarted.service.log_text()


def test_a_full_spool_refuses_new_batches_and_keeps_the_earlier_ones(
    tmp_path: Path, clickhouse: StoppableClickHouse
) -> None:
    clickhouse.stop()
    with run_ingest(tmp_path, clickhouse.url, ingest_spool_max_bytes="100") as ingest:
        first, second = result_batches(2)
        [first_ack] = send(ingest, [first])
        [second_ack] = send(ingest, [second])
        assert (first_ack.ok, first_ack.rows) == (True, 2)
        assert not second_ack.ok
        assert "ingest spool full (" in second_ack.error
        assert "bytes unreplayed): retry later" in second_ack.error
        assert metric(ingest, "quarry_ingest_spool_full_refusals_total") == 1

        clickhouse.start()
        assert wait_for_rows(clickhouse.url, {first.batch_id: 2}) == {first.batch_id: 2}
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while metric(ingest, "quarry_ingest_replay_lag_batches") and time.monotonic() < deadline:
            time.sleep(0.1)
        [retried] = send(ingest, [second])
        assert (retried.ok, retried.rows) == (True, 2)
        stored = wait_for_rows(clickhouse.url, {first.batch_id: 2, second.batch_id: 2})
        assert stored == {first.batch_id: 2, second.batch_id: 2}


def test_a_duplicate_re_sent_after_an_ingest_restart_is_stored_once(
    tmp_path: Path, clickhouse_url: str
) -> None:
    batch = make_batch(logs_pb2.RESULT, EVENT_RECORDS)
    with run_ingest(tmp_path, clickhouse_url) as ingest:
        [ack] = send(ingest, [batch])
        assert (ack.ok, ack.duplicate) == (True, False)

    with run_ingest(tmp_path, clickhouse_url) as restarted:
        [again] = send(restarted, [batch])
        assert (again.ok, again.duplicate) == (True, True)
    assert wait_for_rows(clickhouse_url, {batch.batch_id: 2}) == {batch.batch_id: 2}
