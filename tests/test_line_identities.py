"""Line identities, unit by unit: the gateway's (gateway/log_lines.py) and the memory ingest
keeps of them (ingest_service/line_identities.py); the end-to-end proofs on real processes
are in tests/test_exactly_once.py."""

from __future__ import annotations

from array import array
from pathlib import Path

import orjson

from gateway.log_lines import encode_lines
from ingest_service import line_identities
from ingest_service.line_identities import MAX_LINES, LineIdentities
from ingest_service.spool import Position, Spool
from protos.v1 import logs_pb2
from tests.emulator import log_records

NOW = 1_736_072_430


def ids(records: list[dict]) -> array:
    packed = array("Q")
    packed.frombytes(encode_lines(records)[1])
    return packed


def status(message: str) -> dict:
    return log_records.status_record("web-01", NOW, message=message)


def test_encode_lines_gives_the_json_array_and_one_identity_per_line() -> None:
    records = [status("a"), status("b")]
    data_json, packed = encode_lines(records)
    assert orjson.loads(data_json) == records
    assert data_json == orjson.dumps(records)
    assert len(packed) == 8 * len(records)


def test_a_line_has_the_same_identity_alone_and_merged_into_a_later_batch() -> None:
    first = ids([status("a"), status("b")])
    merged = ids([status("a"), status("b"), status("c")])
    assert list(merged[:2]) == list(first)
    assert merged[2] not in first


def test_identical_lines_have_one_identity_whatever_batch_they_come_in() -> None:
    twice = ids([status("same"), status("same")])
    assert twice[0] == twice[1]
    assert ids([status("other"), status("same")])[1] == twice[0]


def new_lines(memory: LineIdentities, key: str, batch: list[int]) -> list[int]:
    """Store a batch as ingest does; the lines it found new."""
    ids = array("Q", batch)
    reading = memory.read(key, ids)
    memory.stored(key, ids, reading, NOW)
    repeated = reading.repeated if reading else [False] * len(batch)
    return [i for i, seen in zip(batch, repeated, strict=True) if not seen]


def test_a_batch_taking_up_remembered_lines_repeats_them_and_one_starting_anew_replaces_them() -> (
    None
):
    memory = LineIdentities(window_s=60)
    assert new_lines(memory, "1:n", [1, 2, 3]) == [1, 2, 3]
    # The answer was lost: osquery sends 1-3 again with 4.
    assert new_lines(memory, "1:n", [1, 2, 3, 4]) == [4]
    # Lost again, and again merged.
    assert new_lines(memory, "1:n", [1, 2, 3, 4, 5]) == [5]
    # The answer arrived: osquery deleted 1-5, its next batch starts with a new line.
    assert new_lines(memory, "1:n", [6, 7]) == [6, 7]
    assert memory.read("1:n", array("Q", [1, 2])) is None
    # Another node, or another kind of the same node, is another memory.
    assert memory.read("2:n", array("Q", [6])) is None


def test_a_re_send_cut_short_and_answered_leaves_the_rest_to_be_recognised() -> None:
    """Status lines get what results leave of --logger_tls_max_lines, so a re-send may carry
    only the first of the lost lines; once it is answered, the rest come first."""
    memory = LineIdentities(window_s=60)
    new_lines(memory, "1:n", [1, 2, 3, 4])
    assert new_lines(memory, "1:n", [1, 2]) == []
    assert new_lines(memory, "1:n", [3, 4, 5]) == [5]


def test_new_lines_sorted_before_the_re_sent_ones_do_not_hide_them() -> None:
    """osquery's keys sort `tls_r_<t>_100` before `tls_r_<t>_99`: within one second, lines
    logged after a lost batch can come first in the batch that re-sends it."""
    memory = LineIdentities(window_s=60)
    new_lines(memory, "1:n", [98, 99])
    assert new_lines(memory, "1:n", [100, 101, 98, 99, 102]) == [100, 101, 102]


def test_identical_lines_in_one_batch_are_two_lines_and_are_both_recognised_when_re_sent() -> None:
    memory = LineIdentities(window_s=60)
    twin = 77
    assert new_lines(memory, "1:n", [twin, twin]) == [twin, twin]
    assert new_lines(memory, "1:n", [twin, twin, twin, 5]) == [twin, 5]


def test_identical_lines_split_by_a_re_send_cut_short_are_each_recognised() -> None:
    """A batch holds two identical status lines; its answer is lost; the re-send, cut short,
    carries only the first, and is answered; the next batch starts with the second."""
    memory = LineIdentities(window_s=60)
    twin = 77
    new_lines(memory, "1:n", [1, twin, twin])
    assert new_lines(memory, "1:n", [1, twin]) == []
    assert new_lines(memory, "1:n", [twin, 2]) == [2]


def test_lines_re_sent_twice_in_another_order_are_recognised_both_times() -> None:
    """Within one second, lines logged after a lost batch can sort before it (`_100` before
    `_99`); the memory keeps the order lines were first stored in, so a second re-send in
    key order takes them up out of that order."""
    memory = LineIdentities(window_s=60)
    lost = list(range(60, 75))
    new_lines(memory, "1:n", lost)
    assert new_lines(memory, "1:n", [100, 101, *lost, 75, 76]) == [100, 101, 75, 76]
    assert new_lines(memory, "1:n", [100, 101, 102, *lost, 75, 76]) == [102]


def test_a_re_send_cut_short_in_key_order_keeps_the_lines_it_cut_off() -> None:
    """Line 10 sorts before 1-3 (key order, not the order they were stored in); a re-send
    cut short after 2 still holds 3 in osquery's buffer, whatever the stored order says."""
    memory = LineIdentities(window_s=60)
    new_lines(memory, "1:n", [1, 2, 3])
    assert new_lines(memory, "1:n", [10, 1, 2, 3]) == [10]
    assert new_lines(memory, "1:n", [10, 1, 2, 11]) == [11]
    assert new_lines(memory, "1:n", [3, 12]) == [12]


def test_a_line_identical_to_one_from_the_same_answered_post_is_a_new_line() -> None:
    """Two identical status lines split by a batch's cut: the first went with line 1 and was
    answered; the second, alone in the next batch, has the first one's identity (it is the
    first of its kind there) but cannot be a re-send, since line 1 is gone."""
    memory = LineIdentities(window_s=60)
    twin = 77
    new_lines(memory, "1:n", [1, twin])
    assert new_lines(memory, "1:n", [twin, 2]) == [twin, 2]


def test_the_memory_per_node_is_bounded_and_idle_nodes_are_forgotten() -> None:
    memory = LineIdentities(window_s=60)
    new_lines(memory, "1:busy", list(range(MAX_LINES)))
    new_lines(memory, "1:busy", [*range(MAX_LINES), *range(MAX_LINES, MAX_LINES + 10)])
    assert len(memory.lines["1:busy"].ids) == 8 * MAX_LINES
    memory.stored("1:idle", array("Q", [1]), None, now=NOW - 120)
    assert memory.forget_older_than(NOW - 60) == 1
    assert set(memory.lines) == {"1:busy"}


def spooled_batch(node: str, line_ids: list[int], repeated: list[bool] | None = None) -> bytes:
    return logs_pb2.LogBatch(
        batch_id=f"{node}-{line_ids}",
        kind=logs_pb2.STATUS,
        node_id=node,
        data_json=b"[]",
        line_ids=array("Q", line_ids).tobytes(),
        repeated_lines=bytes(repeated or []),
    ).SerializeToString()


def test_a_restart_finds_the_snapshot_plus_the_batches_spooled_after_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1 << 20, retention_s=3600)
    try:
        spool.append([spooled_batch("a", [1, 2])])
        memory = LineIdentities(window_s=60)
        memory.apply_spooled(spool, Position(0, 0))
        line_identities.write_snapshot(tmp_path, memory.snapshot(), spool.end_position())
        # After the snapshot: a re-send for a (adds 3) and a first batch for b.
        resent = spooled_batch("a", [1, 2, 3], repeated=[True, True, False])
        spool.append([resent, spooled_batch("b", [9])])
    finally:
        spool.close()

    reopened = Spool(tmp_path, segment_bytes=1 << 20, retention_s=3600)
    try:
        loaded = line_identities.load(reopened, window_s=60)
    finally:
        reopened.close()
    key_a, key_b = f"{logs_pb2.STATUS}:a", f"{logs_pb2.STATUS}:b"
    assert loaded.read(key_a, array("Q", [1, 2, 3, 4])).repeated == [True, True, True, False]
    assert loaded.read(key_b, array("Q", [9])).repeated == [True]


def test_a_damaged_snapshot_is_rebuilt_from_the_whole_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1 << 20, retention_s=3600)
    try:
        spool.append([spooled_batch("a", [1, 2])])
        line_identities.write_snapshot(tmp_path, {}, spool.end_position())
        snapshot = tmp_path / line_identities.SNAPSHOT_FILE
        snapshot.write_bytes(snapshot.read_bytes()[:-1] + b"\0")
        loaded = line_identities.load(spool, window_s=60)
    finally:
        spool.close()
    assert loaded.read(f"{logs_pb2.STATUS}:a", array("Q", [1, 2])).repeated == [True, True]
