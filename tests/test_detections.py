"""Detections end to end: rules applied with `quarry config apply`, emulated osquery nodes
logging through the real gateway and ingest (chdb), the detection service raising alerts
into Debian's Alertmanager and a webhook receiver that fails on purpose.

What is proven: a matching row becomes one alert (Alertmanager has it with its labels, the
webhook gets it after its refusals, every attempt recorded, quarry.alerts holds it); more
hits while it is open are not notified again; rows are evaluated exactly once across a
kill of the detection service; the alert resolves when the rule stops hitting;
`quarry detection list|test` report and try rules, role-checked and audited.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.alert_receivers import (
    Alertmanager,
    WebhookReceiver,
    alertmanager,
    webhook_receiver,
)
from tests.emulator import HostProfile, OsqueryNode, log_records
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

RULE = "processes-from-tmp"
STARTER = Path(__file__).resolve().parent.parent / "deploy" / "detections" / "starter-rules.yaml"
RESOLVE_AFTER_S = 20
WEBHOOK_REFUSALS = 2
_hosts = itertools.count(1)


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[Alertmanager, WebhookReceiver]]:
    with alertmanager() as manager, webhook_receiver(WEBHOOK_REFUSALS) as hook:
        yield manager, hook


@pytest.fixture(scope="module")
def cluster(
    receivers: tuple[Alertmanager, WebhookReceiver], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    manager, hook = receivers
    env = {
        "QUARRY_DETECTION_ALERTMANAGER_URL": manager.url,
        "QUARRY_DETECTION_WEBHOOK_URLS": hook.url,
        # Short delays keep the test short; the defaults are in quarry/runtime/settings.py.
        "QUARRY_DETECTION_SETTLE_S": "2",
        "QUARRY_DETECTION_REPOST_S": "2",
        "QUARRY_DETECTION_RETRY_BASE_S": "0.5",
        "QUARRY_DETECTION_RETRY_MAX_S": "2",
        "QUARRY_INGEST_FLUSH_INTERVAL_S": "0.2",
    }
    root = tmp_path_factory.mktemp("detections")
    with quarry_cluster(root, "", env) as running:
        rules = yaml.safe_load(STARTER.read_text())
        rules["detections"][RULE].update(schedule=5, resolve_after=RESOLVE_AFTER_S)
        # Only the rule under test goes live; the others are tried from the file.
        live = {"detections": {RULE: rules["detections"][RULE]}}
        (root / "rules.yaml").write_text(yaml.safe_dump(live))
        running.cli("config", "apply", "-f", str(root / "rules.yaml"))
        yield running


def new_node(cluster: QuarryCluster) -> OsqueryNode:
    profile = HostProfile.make(next(_hosts), seed=cluster.port_base)
    return OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=profile,
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )


def log_processes(cluster: QuarryCluster, host: str, *paths: str, node=None) -> OsqueryNode:
    async def send() -> OsqueryNode:
        node_ = node or new_node(cluster)
        node_.host_identifier = host
        await node_.enroll()
        rows = [{"pid": str(1000 + i), "path": p, "cmdline": p} for i, p in enumerate(paths)]
        records = log_records.event_records(
            "pack_incident-response_processes", host, int(time.time()), added=rows
        )
        assert await node_.send_logs("result", records)
        await node_.aclose()
        return node_

    return asyncio.run(send())


def state_rows(cluster: QuarryCluster, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of the detection service's own SQLite state, read without writing it."""
    path = cluster.state_dir / "detection.sqlite3"
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def host_alerts(manager: Alertmanager, host: str) -> list[dict]:
    return [a for a in manager.alerts() if a["labels"].get("host") == host]


def events_for(hook: WebhookReceiver, host: str, event: str = "") -> list[dict]:
    return [
        body
        for body in hook.delivered()
        if body["host_identifier"] == host and (not event or body["event"] == event)
    ]


def cli_as(cluster: QuarryCluster, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env(), "QUARRY_ADMIN_TOKEN": token}
    command = [sys.executable, "-m", "quarry", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def first_alert(cluster: QuarryCluster, receivers: tuple[Alertmanager, WebhookReceiver]) -> dict:
    """One host ran a binary from /tmp; the alert it raised, as the webhook got it."""
    _, hook = receivers
    host = "det-e2e-first"
    log_processes(cluster, host, "/tmp/.x/miner", "/usr/sbin/sshd")
    delivered = eventually(lambda: events_for(hook, host, "firing"), 60)
    assert delivered, cluster.log_text()[-4000:]
    return delivered[0]


def test_a_matching_row_fires_one_alert_in_alertmanager_with_its_labels(
    first_alert: dict, receivers: tuple[Alertmanager, WebhookReceiver]
) -> None:
    manager, _ = receivers
    host = first_alert["host_identifier"]
    (alert,) = eventually(lambda: host_alerts(manager, host), 30)
    assert alert["labels"] == {
        "alertname": RULE,
        "rule": RULE,
        "host": host,
        "severity": "high",
        "dedup_key": json.dumps([host, "/tmp/.x/miner"], separators=(",", ":")),
    }
    assert alert["status"]["state"] == "active"
    assert alert["annotations"]["alert_id"] == first_alert["alert_id"]
    # Re-posted every 2 s while open, with the rule's description each time.
    time.sleep(3)
    (alert,) = host_alerts(manager, host)
    assert alert["annotations"]["description"] == first_alert["description"] != ""


def test_the_webhook_gets_it_after_refusing_and_every_attempt_is_recorded(
    cluster: QuarryCluster, first_alert: dict, receivers: tuple[Alertmanager, WebhookReceiver]
) -> None:
    _, hook = receivers
    assert hook.refused() == WEBHOOK_REFUSALS
    assert first_alert["rule"] == RULE and first_alert["severity"] == "high"
    assert [row["path"] for row in first_alert["rows"]] == ["/tmp/.x/miner"]
    # The receiver refused the first two attempts at this event: both are recorded, then
    # the delivery, under one event id (what a receiver dedupes on).
    outcomes = state_rows(
        cluster,
        "SELECT a.outcome FROM delivery_attempts a JOIN outbox o ON o.id = a.outbox_id "
        "WHERE o.destination LIKE 'webhook:%' AND o.event_id = ? ORDER BY a.rowid",
        (first_alert["event_id"],),
    )
    assert [o for (o,) in outcomes] == ["failed", "failed", "delivered"]
    keys = {key for _, key, body, _ in hook.requests if body["event_id"] == first_alert["event_id"]}
    assert keys == {first_alert["event_id"]}


def test_the_detection_metrics(cluster: QuarryCluster, first_alert: dict) -> None:
    # Before the restart test below: counters start again with the process.
    port = cluster.settings.metrics_port("detection")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f'quarry_detection_runs_total{{outcome="ok",rule="{RULE}"}}' in text
    assert 'quarry_detection_deliveries_total{destination="webhook",outcome="failed"}' in text
    assert (
        'quarry_detection_deliveries_total{destination="alertmanager",outcome="delivered"}' in text
    )
    assert f'quarry_detection_lag_seconds{{rule="{RULE}"}}' in text
    # Beside the lag, for the alert that tells a rule behind from one that runs rarely.
    assert f'quarry_detection_schedule_seconds{{rule="{RULE}"}} 5.0' in text


def test_the_alert_is_stored_in_clickhouse_with_its_rows(
    cluster: QuarryCluster, first_alert: dict
) -> None:
    sql = (
        "SELECT event, rule, host_identifier, rows_json FROM quarry.alerts "
        f"WHERE alert_id = '{first_alert['alert_id']}'"
    )
    rows = eventually(lambda: cluster.sql(sql), 30)
    assert [(r["event"], r["rule"], r["host_identifier"]) for r in rows] == [
        ("firing", RULE, first_alert["host_identifier"])
    ]
    (stored,) = rows[0]["rows_json"]
    assert json.loads(stored)["path"] == "/tmp/.x/miner"


def test_more_hits_while_open_are_not_notified_again_and_survive_a_restart(
    cluster: QuarryCluster, first_alert: dict, receivers: tuple[Alertmanager, WebhookReceiver]
) -> None:
    _, hook = receivers
    host = first_alert["host_identifier"]
    alert_id = first_alert["alert_id"]

    def hits() -> int:
        (count,) = state_rows(cluster, "SELECT hits FROM alerts WHERE alert_id = ?", (alert_id,))
        return count[0]

    log_processes(cluster, host, "/tmp/.x/miner")
    assert eventually(lambda: hits() == 2, 30), hits()
    # Killed while rows wait: the restarted service evaluates them once, not twice.
    cluster.kill_service("detection")
    log_processes(cluster, host, "/tmp/.x/miner", "/tmp/.x/miner")
    assert eventually(lambda: hits() == 4, 60), (hits(), cluster.log_text()[-3000:])
    time.sleep(8)  # more than a schedule: a second evaluation would show now
    assert hits() == 4
    assert [e["alert_id"] for e in events_for(hook, host, "firing")] == [alert_id]
    stored = cluster.sql(
        f"SELECT sum(length(rows_json)) AS rows FROM quarry.alerts WHERE alert_id = '{alert_id}'"
    )
    assert int(stored[0]["rows"]) == 4


def test_detection_list_shows_runs_lag_and_hits(cluster: QuarryCluster, first_alert: dict) -> None:
    listed = cluster.cli_json("detection", "list")
    (rule,) = listed["detections"]
    assert listed["leader"] is True
    assert rule["name"] == RULE and rule["last_error"] == ""
    assert rule["total_hits"] >= 1 and rule["open_alerts"] >= 1
    assert rule["last_run_at"] > 0 and rule["lag_s"] < 120
    table = cluster.cli("detection", "list").stdout
    assert RULE in table.splitlines()[1]


def test_detection_test_shows_what_a_rule_would_raise(
    cluster: QuarryCluster, first_alert: dict
) -> None:
    host = first_alert["host_identifier"]
    tried = cluster.cli_json("detection", "test", RULE, "--since", "1h")
    assert tried["error"] == ""
    mine = [a for a in tried["alerts"] if a["host_identifier"] == host]
    assert [a["dedup_key"] for a in mine] == [[host, "/tmp/.x/miner"]]
    # A rule not applied, from the starter file: no such rows, nothing raised.
    other = cluster.cli_json("detection", "test", "new-users", "-f", str(STARTER))
    assert other["error"] == "" and other["alerts"] == []


def test_a_failing_rule_is_one_line_and_an_unknown_one_names_the_live(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    sql = "SELECT host_identifier FROM quarry.no_such_table WHERE {arrived}"
    broken.write_text(yaml.safe_dump({"detections": {"broken": {"sql": sql}}}))
    failed = cluster.cli("detection", "test", "broken", "-f", str(broken), check=False)
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()[-1:]
    assert line.startswith("detection test broken: the rule's SQL failed:")
    assert "no_such_table" in line and "Traceback" not in failed.stderr
    unknown = cluster.cli("detection", "test", "nope", check=False)
    assert unknown.returncode != 0
    assert f"no live detection 'nope' (live: {RULE})" in unknown.stderr


def test_roles_read_only_lists_but_may_not_test_and_both_are_audited(
    cluster: QuarryCluster,
) -> None:
    created = cluster.cli_json("token", "create", "det-reader", "--role", "read-only")
    reader = created["value"]
    assert cli_as(cluster, reader, "detection", "list").returncode == 0
    refused = cli_as(cluster, reader, "detection", "test", RULE)
    assert refused.returncode != 0
    assert "may not call TestDetection: it needs operator" in refused.stderr
    entries = cluster.cli_json("audit", "list", "--token", "det-reader")
    calls = {(e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in entries}
    assert calls == {("ListDetections", "OK"), ("TestDetection", "PERMISSION_DENIED")}


def test_the_alert_resolves_when_the_rule_stops_hitting(
    cluster: QuarryCluster, first_alert: dict, receivers: tuple[Alertmanager, WebhookReceiver]
) -> None:
    manager, hook = receivers
    host = first_alert["host_identifier"]
    resolved = eventually(lambda: events_for(hook, host, "resolved"), RESOLVE_AFTER_S + 40)
    assert [e["alert_id"] for e in resolved[:1]] == [first_alert["alert_id"]]
    # Alertmanager was told it ended: it no longer lists it as active.
    assert eventually(
        lambda: all(a["status"]["state"] != "active" for a in host_alerts(manager, host)), 30
    )
    listed = cluster.cli_json("detection", "list")["detections"]
    assert listed[0]["open_alerts"] == 0


def test_a_dry_run_shows_the_rules_diff_and_get_prints_them(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    live = yaml.safe_load(cluster.cli("get", "detections").stdout)
    assert set(live["detections"]) == {RULE}
    live["detections"][RULE]["severity"] = "critical"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(live))
    shown = cluster.cli("config", "apply", "-f", str(tmp_path / "rules.yaml"), "--dry-run")
    assert "## detection rules (run by the detection service, not sent to nodes)" in shown.stdout
    assert "-  severity: high" in shown.stdout
    assert "+  severity: critical" in shown.stdout
    assert "   sql: |" in shown.stdout  # the SQL on its own lines, as in the files
    assert shown.stdout.strip().endswith(
        "dry run: 0 node group(s) would change; the detection rules would change; nothing applied"
    )
