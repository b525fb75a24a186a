"""Unit tests of ingest_service.host_inventory.HostDirectory: how the enroll and config feeds
fold into quarry.hosts rows, and which rows are written (no I/O; the processes are tested
in tests/test_hosts_table.py)."""

from __future__ import annotations

import json

from ingest_service.host_inventory import REVOKED, HostDirectory, HostRow, written_rows
from protos.v1 import config_pb2, enroll_pb2

Event = enroll_pb2.NodeEvent


def node(node_id: str, key: str = "", **fields: object) -> enroll_pb2.Node:
    values: dict[str, object] = {
        "node_id": node_id,
        "node_key": key or f"key-{node_id}",
        "host_identifier": f"host-{node_id}",
        "hostname": f"{node_id}.example",
        "platform": "ubuntu",
        "os_version": "22.04.4 LTS",
        "osquery_version": "5.12.1",
        "secret_name": "default",
        "secret_tags": ["prod"],
        "enrolled_at": 1000,
        "last_seen_at": 1000,
    }
    return enroll_pb2.Node(**{**values, **fields})  # type: ignore[arg-type]


def synced(*nodes: enroll_pb2.Node) -> HostDirectory:
    directory = HostDirectory()
    directory.replace_nodes(list(nodes))
    directory.apply_config_event(config_pb2.ConfigEvent(snapshot=True))
    return directory


def written(directory: HostDirectory) -> dict[str, HostRow]:
    """Flush as the writer does (a write that succeeds); the rows written, by node."""
    rows = directory.changed_rows()
    directory.wrote(rows, directory.versioned(rows, 5_000_000))
    return {row.node_id: row for row in rows}


def test_a_node_becomes_a_row_with_its_secret_tags_and_status() -> None:
    directory = synced(node("a"), node("b", pending=True))
    rows = written(directory)
    assert rows["a"] == HostRow(
        node_id="a",
        host_identifier="host-a",
        hostname="a.example",
        platform="ubuntu",
        os_version="22.04.4 LTS",
        osquery_version="5.12.1",
        tags=("prod",),
        labels=(),
        secret_name="default",
        status="enrolled",
        enrolled_at=1000,
        last_seen=1000,
    )
    assert rows["b"].status == "pending"
    assert written(directory) == {}, "nothing changed: nothing written again"


def test_labels_node_tags_revocation_and_last_seen_each_write_one_row() -> None:
    directory = synced(node("a"), node("b"))
    written(directory)
    state = {"node_tags": {"host-a": ["canary"]}}
    live = config_pb2.StateVersion(version=2, state_json=json.dumps(state))
    membership = config_pb2.LabelMembership(node_id="b", labels=["web", "deployers"])
    directory.apply_config_event(config_pb2.ConfigEvent(live=live, memberships=[membership]))
    rows = written(directory)
    assert rows["a"].tags == ("canary", "prod")
    assert rows["b"].labels == ("deployers", "web")

    directory.apply_node_event(Event(kind=Event.REMOVE, node=node("a")))
    checkin = enroll_pb2.Checkin(node_id="b", seen_at=2000)
    directory.apply_node_event(Event(kind=Event.SEEN, seen=[checkin]))
    rows = written(directory)
    assert rows["a"].status == REVOKED
    assert rows["b"].last_seen == 2000 and rows["b"].status == "enrolled"


def test_a_re_enrollment_replaces_the_key_and_stays_enrolled() -> None:
    directory = synced(node("a", key="old"))
    written(directory)
    group = [
        Event(kind=Event.REMOVE, node=node("a", key="old")),
        Event(kind=Event.UPSERT, node=node("a", key="new", enrolled_at=3000)),
    ]
    directory.apply_node_event(Event(kind=Event.GROUP, group=group))
    rows = written(directory)
    assert rows["a"].status == "enrolled" and rows["a"].enrolled_at == 3000
    # A late REMOVE of the replaced key does not revoke the node.
    directory.apply_node_event(Event(kind=Event.REMOVE, node=node("a", key="old")))
    assert written(directory) == {}


def test_after_a_restart_only_what_changed_is_written_and_missing_nodes_are_revoked() -> None:
    before = synced(node("a"), node("b"), node("c"))
    stored = written(before)
    # What a new ingest process reads back from hosts_current.
    result_rows = [
        [r.node_id, r.host_identifier, r.hostname, r.platform, r.os_version,
         r.osquery_version, list(r.tags), list(r.labels), r.secret_name, r.status,
         r.enrolled_at, r.last_seen, before.versions[r.node_id]]
        for r in stored.values()
    ]  # fmt: skip
    after = HostDirectory()
    after.load(written_rows(result_rows))
    # While it was down: c was revoked, b checked in.
    after.replace_nodes([node("a"), node("b", last_seen_at=4000)])
    after.apply_config_event(config_pb2.ConfigEvent(snapshot=True))
    rows = after.changed_rows()
    assert {row.node_id: (row.status, row.last_seen) for row in rows} == {
        "b": ("enrolled", 4000),
        "c": (REVOKED, 1000),
    }
    values = after.versioned(rows, 1)  # a clock behind the previous writer's
    assert all(v[-1] > before.versions[v[0]] for v in values)


def test_a_node_revoked_while_a_stream_was_away_is_revoked_by_the_next_snapshot() -> None:
    directory = synced(node("a"), node("b"))
    written(directory)
    directory.replace_nodes([node("b")])
    assert {r.node_id: r.status for r in written(directory).values()} == {"a": REVOKED}


def test_a_failed_write_is_tried_again() -> None:
    directory = synced(node("a"))
    rows = directory.changed_rows()
    directory.failed(rows)
    assert [row.node_id for row in directory.changed_rows()] == ["a"]


def test_a_config_snapshot_replaces_memberships() -> None:
    directory = synced(node("a"))
    held = config_pb2.LabelMembership(node_id="a", labels=["web"])
    directory.apply_config_event(config_pb2.ConfigEvent(memberships=[held]))
    assert written(directory)["a"].labels == ("web",)
    directory.apply_config_event(config_pb2.ConfigEvent(snapshot=True))
    assert written(directory)["a"].labels == ()
