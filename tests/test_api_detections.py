"""Detections and alerts through the REST API and the web console, end to end: a real
`quarry up` cluster with the detection service, a rule applied with `quarry config apply`,
an emulated osquery node logging a process run from /tmp through the real gateway and
ingest (chdb), and the alert it raises read back over HTTPS and in Debian's chromium.

What is proven: the rules list with their last run, lag and hits; a rule tried over the
last hours answers what it would raise; the alert is listed open first and found by each
filter (and by no other value), its page has its event and the row that matched; every
answer matches the OpenAPI document; a read-only token may list but is refused the test,
and the refusal is audited; text in a filter stays text; the console's Detections and
Alerts pages show the same, and an operator tests a rule from the page.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from api_service.app import OPENAPI_PATH
from quarry.runtime.settings import PORT_OFFSETS
from tests.emulator import log_records
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.test_api import Api, validate
from tests.test_detections import RULE, STARTER, log_processes, new_node

HOST = "det-api-host"
QUIET_HOST = "det-api-quiet"
# A second rule that resolves soon after its last hit: an alert seen open, then resolved.
RESOLVING_RULE = "deleted-binaries"
RESOLVING_HOST = "det-api-resolving"
RESOLVE_AFTER_S = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    env = {
        # Short delays keep the test short; the defaults are in quarry/runtime/settings.py.
        "QUARRY_DETECTION_SETTLE_S": "2",
        "QUARRY_INGEST_FLUSH_INTERVAL_S": "0.2",
    }
    root = tmp_path_factory.mktemp("detections-api")
    with quarry_cluster(root, "", env) as running:
        rules = yaml.safe_load(STARTER.read_text())
        rules["detections"][RULE].update(schedule=5)
        rules["detections"][RESOLVING_RULE].update(schedule=5, resolve_after=RESOLVE_AFTER_S)
        live = {name: rules["detections"][name] for name in (RULE, RESOLVING_RULE)}
        (root / "rules.yaml").write_text(yaml.safe_dump({"detections": live}))
        running.cli("config", "apply", "-f", str(root / "rules.yaml"))
        yield running


@pytest.fixture(scope="module")
def admin(cluster: QuarryCluster) -> Api:
    return Api(cluster, (cluster.state_dir / "admin_token").read_text().strip())


@pytest.fixture(scope="module")
def document(admin: Api) -> dict:
    return admin.ok("GET", OPENAPI_PATH)


def get(api: Api, document: dict, template: str, status: int = 200, **kwargs: Any) -> Any:
    """An answer, checked against the document's schema for its operation."""
    path = template.format(**kwargs.pop("path", {}))
    method = kwargs.pop("method", "GET")
    body = api.ok(method, path, status, **kwargs)
    validate(document, method, template, status, body)
    return body


def token_of(admin: Api, name: str, role: str) -> str:
    return admin.ok("POST", "/api/v1/tokens", 201, json={"name": name, "role": role})["value"]


@pytest.fixture(scope="module")
def alert(cluster: QuarryCluster, admin: Api, document: dict) -> dict:
    """The alert raised by a host that ran a binary from /tmp, as the API lists it."""
    log_processes(cluster, HOST, "/tmp/.x/miner", "/usr/sbin/sshd")
    log_processes(cluster, QUIET_HOST, "/usr/sbin/sshd")

    def listed() -> list[dict]:
        return get(admin, document, "/api/v1/alerts", params={"host": HOST})["items"]

    found = eventually(listed, 60)
    assert found, cluster.log_text()[-4000:]
    return found[0]


def test_the_rules_are_listed_with_last_run_lag_and_hits(
    admin: Api, document: dict, alert: dict
) -> None:
    listed = get(admin, document, "/api/v1/detections")
    assert listed["leader"] is True and listed["total"] == 2
    (rule,) = [r for r in listed["items"] if r["name"] == RULE]
    assert rule["name"] == RULE and rule["severity"] == "high" and rule["last_error"] == ""
    assert rule["total_hits"] >= 1 and rule["open_alerts"] >= 1
    assert rule["last_run_at"] is not None and rule["watermark"] is not None
    assert 0 <= rule["lag_s"] < 600


def test_a_rule_is_tried_over_the_last_hours(admin: Api, document: dict, alert: dict) -> None:
    template = "/api/v1/detections/{rule}/test"
    tried = get(admin, document, template, method="POST", path={"rule": RULE}, json={"since": "2h"})
    assert tried["rule"] == RULE and "{arrived}" not in tried["sql"]
    mine = [a for a in tried["alerts"] if a["host_identifier"] == HOST]
    assert [a["dedup_key"] for a in mine] == [[HOST, "/tmp/.x/miner"]]
    assert [r["path"] for r in mine[0]["rows"]] == ["/tmp/.x/miner"]
    assert not [a for a in tried["alerts"] if a["host_identifier"] == QUIET_HOST]
    # Mistakes are one line each: an unknown rule, a bad window, a rule whose SQL fails.
    unknown = admin.request("POST", "/api/v1/detections/nope/test", json={})
    assert unknown.status_code == 404 and RULE in unknown.json()["error"]["message"]
    bad = admin.request("POST", f"/api/v1/detections/{RULE}/test", json={"since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_duration"
    broken = {"rule": {"sql": "SELECT host_identifier FROM quarry.no_such_table WHERE {arrived}"}}
    failed = admin.request("POST", "/api/v1/detections/broken/test", json=broken)
    assert failed.status_code == 400, failed.text
    error = failed.json()["error"]
    assert error["code"] == "rule_failed" and "no_such_table" in error["message"]
    assert "\n" not in error["message"]


def test_the_alert_is_listed_open_and_found_by_each_filter(
    admin: Api, document: dict, alert: dict
) -> None:
    assert alert["rule"] == RULE and alert["severity"] == "high" and alert["state"] == "open"
    assert alert["dedup_key"] == [HOST, "/tmp/.x/miner"] and alert["hits"] >= 1
    assert alert["first_seen"] is not None
    for params in ({"rule": RULE}, {"severity": "high"}, {"state": "open"}, {"host": HOST}):
        found = get(admin, document, "/api/v1/alerts", params=params)
        assert alert["alert_id"] in {a["alert_id"] for a in found["items"]}, params
    for params in (
        {"rule": "other"},
        {"severity": "low"},
        {"state": "resolved", "rule": RULE},
        {"host": QUIET_HOST},
        # A filter's text is a value, never SQL.
        {"host": "x' OR '1'='1"},
        {"rule": "') OR 1 --"},
    ):
        found = get(admin, document, "/api/v1/alerts", params=params)
        assert found["items"] == [] and found["total"] == 0, params
    refused = admin.request("GET", "/api/v1/alerts", params={"state": "closed"})
    assert refused.status_code == 400 and "open, resolved" in refused.json()["error"]["message"]
    one = get(admin, document, "/api/v1/alerts", params={"limit": 1})
    assert one["limit"] == 1 and len(one["items"]) == 1 and one["items"][0]["state"] == "open"


def test_an_alert_shows_its_events_and_the_rows_that_matched(
    admin: Api, document: dict, alert: dict
) -> None:
    shown = get(admin, document, "/api/v1/alerts/{alert}", path={"alert": alert["alert_id"]})
    assert shown["alert"] == alert
    assert shown["events"][0]["event"] == "firing"
    (row,) = shown["events"][0]["rows"]
    assert row["path"] == "/tmp/.x/miner" and row["host_identifier"] == HOST
    missing = admin.request("GET", f"/api/v1/alerts/{quote('nope', safe='')}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def log_deleted_binary(cluster: QuarryCluster, host: str) -> None:
    """A process whose executable is gone from disk: a hit of RESOLVING_RULE."""

    async def send() -> None:
        node = new_node(cluster)
        node.host_identifier = host
        await node.enroll()
        row = {"pid": "4242", "name": "gone", "path": "/usr/bin/gone", "on_disk": "0"}
        records = log_records.event_records(
            "pack_incident-response_processes", host, int(time.time()), added=[row]
        )
        assert await node.send_logs("result", records)
        await node.aclose()

    asyncio.run(send())


def test_an_alert_the_rule_stops_hitting_is_resolved_and_listed_after_the_open(
    cluster: QuarryCluster, admin: Api, document: dict, alert: dict
) -> None:
    log_deleted_binary(cluster, RESOLVING_HOST)

    def resolved() -> list[dict]:
        params = {"rule": RESOLVING_RULE, "state": "resolved"}
        return get(admin, document, "/api/v1/alerts", params=params)["items"]

    found = eventually(resolved, 90)
    assert found, cluster.log_text()[-4000:]
    (gone,) = found
    assert gone["host_identifier"] == RESOLVING_HOST and gone["state"] == "resolved"
    open_ = get(admin, document, "/api/v1/alerts", params={"state": "open"})["items"]
    assert gone["alert_id"] not in {a["alert_id"] for a in open_}
    # Open alerts come first in the unfiltered list, the resolved one after them.
    states = [a["state"] for a in get(admin, document, "/api/v1/alerts")["items"]]
    assert "resolved" in states and states == sorted(states)  # "open" < "resolved"
    shown = get(admin, document, "/api/v1/alerts/{alert}", path={"alert": gone["alert_id"]})
    assert [e["event"] for e in shown["events"]] == ["firing", "resolved"]
    assert shown["events"][0]["rows"][0]["path"] == "/usr/bin/gone"


def test_a_read_only_token_lists_but_is_refused_the_test_and_it_is_audited(
    cluster: QuarryCluster, admin: Api, alert: dict
) -> None:
    reader = Api(cluster, token_of(admin, "det-api-reader", "read-only"))
    assert reader.request("GET", "/api/v1/detections").status_code == 200
    assert reader.request("GET", "/api/v1/alerts").status_code == 200
    refused = reader.request("POST", f"/api/v1/detections/{RULE}/test", json={})
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "permission_denied"
    assert "may not call TestDetection: it needs operator" in error["message"]

    def audited() -> set[tuple[str, str]]:
        entries = admin.ok("GET", "/api/v1/audit", params={"token": "det-api-reader"})
        return {(e["method"].rsplit("/", 1)[-1], e["outcome"]) for e in entries["items"]}

    assert eventually(lambda: ("TestDetection", "PERMISSION_DENIED") in audited(), 30)
    assert ("ListDetections", "OK") in audited()


# --- the console ----------------------------------------------------------------------


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Any]:
    """The browser helpers of tests/test_console.py (skipped there without chromium)."""
    import tests.test_console as console_tests

    yield console_tests


def test_the_console_shows_the_rules_and_the_alert_and_an_operator_tests_a_rule(
    cluster: QuarryCluster, admin: Api, alert: dict, console: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    url = f"https://localhost:{cluster.port_base + PORT_OFFSETS['api_port']}"
    operator = token_of(admin, "det-console-operator", "operator")
    browser = console.new_browser(tmp_path / "chromium")
    try:
        console.log_in(browser, url, operator)
        assert "Detections" in browser.find_element(By.TAG_NAME, "nav").text
        browser.find_element(By.LINK_TEXT, "Alerts").click()
        row = console.wait_for(browser, "#alerts tbody tr", alert["alert_id"])
        assert "open" in row.text and HOST in row.text and RULE in row.text
        # Filters: another host has none; the alert's own host has it.
        browser.get(f"{url}/alerts?host={quote(QUIET_HOST)}")
        console.wait_for(browser, "#alerts", "No alert matches these filters")
        browser.get(f"{url}/alerts?host={quote(HOST)}&state=open")
        browser.find_element(By.LINK_TEXT, alert["alert_id"]).click()
        console.wait_for(browser, "#alert-rows", "/tmp/.x/miner")
        assert "firing" in browser.find_element(By.ID, "alert-events").text
        # The rules, and a test over the last 24 h from the page.
        browser.find_element(By.LINK_TEXT, "Detections").click()
        rules = console.wait_for(browser, "#detections tbody tr", RULE)
        assert "high" in rules.text
        test_form = f"form.test-rule[action='/detections/{RULE}/test'] button"
        browser.find_element(By.CSS_SELECTOR, test_form).click()
        result = console.wait_for(browser, "#would-raise", HOST)
        assert json.dumps([HOST, "/tmp/.x/miner"]) in result.text
        assert "Nothing was stored or sent" in browser.find_element(By.ID, "test-result").text
    finally:
        browser.quit()


def test_a_read_only_session_sees_no_test_form_and_is_refused_it(
    cluster: QuarryCluster, admin: Api, alert: dict, console: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    url = f"https://localhost:{cluster.port_base + PORT_OFFSETS['api_port']}"
    browser = console.new_browser(tmp_path / "chromium")
    try:
        console.log_in(browser, url, token_of(admin, "det-console-reader", "read-only"))
        browser.get(f"{url}/detections")
        console.wait_for(browser, "#detections tbody tr", RULE)
        assert browser.find_elements(By.CSS_SELECTOR, "form.test-rule") == []
        assert "needs the operator role" in browser.find_element(By.TAG_NAME, "main").text
        csrf = console.csrf_of(browser)
        with console.client_as(browser, url, cluster) as client:
            refused = client.post(f"/detections/{RULE}/test", data={"csrf": csrf})
        assert refused.status_code == 403 and "may not call TestDetection" in refused.text
    finally:
        browser.quit()
