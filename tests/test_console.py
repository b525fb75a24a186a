"""The web console in a real browser: Debian's chromium driven by Selenium through the
real API process of a running `quarry up` cluster, with emulated osquery nodes.

An admin logs in, finds a host, runs a live query and sees the rows arrive over the
page's event stream, approves a pending host and applies a config change; a read-only
session is shown no changes and refused the one it forces; a hostname carrying HTML and
script is shown as text; a change without the session's CSRF token is refused; every
page carries the Content-Security-Policy that forbids inline scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from starlette.routing import Route

from api_service.console.pages import console_routes
from api_service.console.web import CONTENT_SECURITY_POLICY, Console
from quarry.runtime.settings import PORT_OFFSETS
from tests.emulator import log_records
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster
from tests.test_api import Api, Fleet, carve_from_a_new_host, token_of_role

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (apt-get install chromium"
        " chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FLEET_SIZE = 3
INJECTED_HOSTNAME = "<img src=x onerror=\"document.title='owned'\"><script>alert(1)</script>"
WAIT_S = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry-console")) as running:
        yield running


@pytest.fixture(scope="module")
def console_url(cluster: QuarryCluster) -> str:
    return f"https://localhost:{cluster.port_base + PORT_OFFSETS['api_port']}"


@pytest.fixture(scope="module")
def admin_token(cluster: QuarryCluster) -> str:
    return (cluster.state_dir / "admin_token").read_text().strip()


STATUS_ERROR = "Error executing scheduled query pack_x: no such table: nope"


class ConsoleFleet(Fleet):
    """The emulated fleet; its second host logs an osquery error once enrolled."""

    async def _run(self) -> None:
        erring = self.nodes[1]
        await erring.get_node_key()
        record = log_records.status_record(
            erring.host_identifier,
            int(time.time()),
            STATUS_ERROR,
            severity=log_records.SEVERITY_ERROR,
        )
        assert await erring.send_logs("status", [record])
        await super()._run()


@pytest.fixture(scope="module")
def fleet(cluster: QuarryCluster) -> Iterator[Fleet]:
    running = ConsoleFleet(cluster, cluster.enroll_secret, FLEET_SIZE)
    running.nodes[0].profile.hostname = INJECTED_HOSTNAME
    with running:
        yield running


def new_browser(tmp_path: Path, javascript: bool = True) -> WebDriver:
    """Headless Debian chromium with its own profile; nothing is downloaded."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={tmp_path}",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    # The cluster's local CA is not in chromium's store; the test trusts it by this flag.
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    browser = webdriver.Chrome(options=options, service=service)
    browser.implicitly_wait(0)
    return browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = new_browser(tmp_path / "chromium")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


def wait_for(browser: WebDriver, css: str, text: str = "") -> object:
    """The element css selects, once it exists (and contains text, when given)."""

    def found(driver: WebDriver) -> object:
        for element in driver.find_elements(By.CSS_SELECTOR, css):
            if text in element.text:
                return element
        return False

    try:
        # A page replaced while it is read (a submit, an htmx swap) is read again.
        stale = (StaleElementReferenceException,)
        wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.2, ignored_exceptions=stale)
        return wait.until(found)
    except TimeoutException:
        shown = browser.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"no {css} with {text!r} at {browser.current_url}:\n{shown}") from None


def log_in(browser: WebDriver, console_url: str, token: str) -> None:
    browser.get(f"{console_url}/hosts")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait_for(browser, "#who")


def client_as(browser: WebDriver, console_url: str, cluster: QuarryCluster) -> httpx.Client:
    """An HTTP client carrying the browser's session cookie (to send what no form offers)."""
    cookie = browser.get_cookie("__Host-quarry_session")
    assert cookie, "no session cookie"
    return httpx.Client(
        base_url=console_url,
        verify=ssl.create_default_context(cafile=cluster.ca_cert),
        cookies={cookie["name"]: cookie["value"]},
        timeout=60,
        follow_redirects=False,
    )


def csrf_of(browser: WebDriver) -> str:
    return browser.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value") or ""


# --- login, cookies, headers ----------------------------------------------------------


def test_log_in_sets_a_strict_session_cookie_and_every_page_has_the_csp(
    browser: WebDriver, console_url: str, admin_token: str, cluster: QuarryCluster
) -> None:
    browser.get(f"{console_url}/login")
    browser.find_element(By.ID, "token").send_keys("qt_wrong")
    browser.find_element(By.ID, "login").click()
    assert "Not logged in" in wait_for(browser, "#login-error").text  # type: ignore[attr-defined]
    log_in(browser, console_url, admin_token)
    cookie = browser.get_cookie("__Host-quarry_session")
    assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert admin_token not in json.dumps(browser.get_cookies())
    assert "root (admin)" in browser.find_element(By.ID, "who").text
    with client_as(browser, console_url, cluster) as client:
        pages = (
            "/hosts",
            "/queries",
            "/approvals",
            "/config",
            "/labels",
            "/carves",
            "/tokens",
            "/audit",
        )
        for path in (*pages, "/login"):
            response = client.get(path)
            assert response.status_code in (200, 303), (path, response.text)
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        # The API keeps its own answers: JSON, and a token, not the cookie.
        assert client.get("/api/v1/hosts").status_code == 401
        assert client.get("/api/v1/nothing").json()["error"]["code"] == "not_found"
    # Logging out ends the session on the server, not only in the browser.
    stolen = browser.get_cookie("__Host-quarry_session")
    browser.find_element(By.CSS_SELECTOR, ".who button").click()
    wait_for(browser, "#token")
    assert stolen
    with httpx.Client(
        base_url=console_url,
        verify=ssl.create_default_context(cafile=cluster.ca_cert),
        cookies={stolen["name"]: stolen["value"]},
    ) as replay:
        response = replay.get("/hosts", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")


# --- hosts, a host, live queries ------------------------------------------------------


def test_find_a_host_and_see_its_details_errors_and_queries(
    browser: WebDriver, console_url: str, admin_token: str, fleet: Fleet
) -> None:
    node = fleet.nodes[1]
    log_in(browser, console_url, admin_token)
    wait_for(browser, "#hosts-table", f"{FLEET_SIZE} hosts")
    search = browser.find_element(By.ID, "q")
    search.send_keys(node.profile.hostname.upper())
    wait_for(browser, "#hosts-table .count", "1 host")
    assert "q=" in browser.current_url  # htmx pushed the search into the address
    rows = browser.find_elements(By.CSS_SELECTOR, "#hosts-table tbody tr")
    assert len(rows) == 1 and node.host_identifier in rows[0].text
    assert "active" in rows[0].find_element(By.CSS_SELECTOR, ".badge").text
    rows[0].find_element(By.CSS_SELECTOR, "a.host-link").click()
    wait_for(browser, "#host-name", node.profile.hostname)
    page = browser.find_element(By.TAG_NAME, "main").text
    assert node.host_identifier in page and "Last seen" in page
    browser_errors = eventually(
        lambda: browser.refresh() or STATUS_ERROR in browser.find_element(By.ID, "host-errors").text
    )
    assert browser_errors, browser.find_element(By.ID, "host-errors").text


def test_run_a_live_query_and_see_the_rows_arrive(
    browser: WebDriver, console_url: str, admin_token: str, cluster: QuarryCluster, fleet: Fleet
) -> None:
    log_in(browser, console_url, admin_token)
    browser.get(f"{console_url}/queries")
    wait_for(browser, "#reach-count", str(FLEET_SIZE))
    tags = browser.find_element(By.NAME, "platforms")
    tags.send_keys("windows")
    wait_for(browser, "#reach-count", "0")
    tags.clear()
    tags.send_keys("linux")
    wait_for(browser, "#reach-count", str(FLEET_SIZE))
    percent = browser.find_element(By.NAME, "percent")
    percent.send_keys("lots")
    wait_for(browser, "#reach-error", "percent must be a number")
    browser.find_element(By.ID, "sql").send_keys("SELECT 1")
    browser.find_element(By.ID, "run").click()
    assert "percent must be a number" in wait_for(browser, "#launch-error").text  # type: ignore[attr-defined]
    assert browser.find_element(By.ID, "sql").get_attribute("value") == "SELECT 1"  # kept
    browser.find_element(By.NAME, "percent").clear()
    browser.find_element(By.ID, "sql").clear()
    browser.find_element(By.ID, "sql").send_keys("SELECT * FROM users")
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "#live")
    assert "/queries/q_" in browser.current_url
    qid = browser.current_url.rsplit("/", 1)[1]
    # The rows come over the page's event stream: 2 users per emulated host.
    WebDriverWait(browser, WAIT_S, 0.2).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rows tbody tr")) == 2 * FLEET_SIZE
    )
    wait_for(browser, "#done-state", "done")
    assert browser.find_element(By.ID, "live").get_attribute("data-state") == "done"
    header = browser.find_element(By.CSS_SELECTOR, "#rows thead").text
    assert "username" in header and "uid" in header
    answered = browser.find_element(By.CSS_SELECTOR, '#counts b[data-state="answered"]')
    assert answered.text == str(FLEET_SIZE)
    # htmx and the page's script ran under the policy without one violation.
    violations = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]
    assert violations == []
    # The hostile hostname's rows are text too; the exports hold every row.
    with client_as(browser, console_url, cluster) as client:
        as_json = client.get(f"/queries/{qid}/rows.json")
        assert as_json.status_code == 200 and len(as_json.json()) == 2 * FLEET_SIZE
        as_csv = client.get(f"/queries/{qid}/rows.csv")
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert len(as_csv.text.strip().splitlines()) == 1 + 2 * FLEET_SIZE
        assert as_csv.text.splitlines()[0].startswith("host_identifier,row_index,")


# --- approvals, config ----------------------------------------------------------------


def test_approve_a_pending_host(
    browser: WebDriver, console_url: str, admin_token: str, cluster: QuarryCluster, fleet: Fleet
) -> None:
    log_in(browser, console_url, admin_token)
    browser.get(f"{console_url}/approvals")
    form = browser.find_element(By.CSS_SELECTOR, "form.create")
    form.find_element(By.NAME, "name").send_keys("console-approval")
    form.find_element(By.NAME, "requires_approval").click()
    form.find_element(By.CSS_SELECTOR, "button").click()
    value = wait_for(browser, "#created-secret code").text  # type: ignore[attr-defined]
    with Fleet(cluster, value, 1, first=FLEET_SIZE) as pending:
        waiting = pending.nodes[0]
        eventually(
            lambda: (
                browser.get(f"{console_url}/approvals")
                or waiting.host_identifier in browser.find_element(By.ID, "pending").text
            )
        )
        row = next(
            r
            for r in browser.find_elements(By.CSS_SELECTOR, "#pending tbody tr")
            if waiting.host_identifier in r.text
        )
        row.find_element(By.CSS_SELECTOR, "button.approve").click()
        wait_for(browser, ".flash.ok", "active")
        assert waiting.host_identifier not in browser.find_element(By.ID, "pending").text
    admin = Api(cluster, admin_token)
    assert admin.ok("GET", f"/api/v1/hosts/{waiting.host_identifier}")["host"]["status"] == (
        "active"
    )


def test_apply_a_config_change_with_errors_inline(
    browser: WebDriver, console_url: str, admin_token: str, fleet: Fleet
) -> None:
    log_in(browser, console_url, admin_token)
    browser.get(f"{console_url}/config")
    before = int(browser.find_element(By.ID, "live-version").text)
    state_box = browser.find_element(By.ID, "state")
    state = json.loads(state_box.get_attribute("value") or "{}")
    state_box.clear()
    state_box.send_keys("{not json")
    browser.find_element(By.ID, "dry-run").click()
    assert "not valid JSON" in wait_for(browser, "#apply-error").text  # type: ignore[attr-defined]
    state["labels"] = {"console-linux": {"query": "SELECT 1", "interval": 60}}
    state_box = browser.find_element(By.ID, "state")
    state_box.clear()
    _set_value(browser, state_box, json.dumps(state, indent=2))
    browser.find_element(By.ID, "dry-run").click()
    wait_for(browser, "#apply-result")
    assert int(browser.find_element(By.ID, "live-version").text) == before
    browser.find_element(By.NAME, "comment").send_keys("from the console")
    browser.find_element(By.ID, "apply-live").click()
    wait_for(browser, ".flash.ok", "is live")
    assert int(browser.find_element(By.ID, "live-version").text) == before + 1
    assert "from the console" in browser.find_element(By.ID, "versions").text
    browser.get(f"{console_url}/labels")
    assert "console-linux" in browser.find_element(By.ID, "labels").text


def _set_value(browser: WebDriver, element: object, text: str) -> None:
    """Typing a long JSON text key by key is slow; set it as a person pasting would."""
    browser.execute_script("arguments[0].value = arguments[1];", element, text)


def test_rotate_a_secret_roll_back_the_config_and_finish_rollouts(
    browser: WebDriver, console_url: str, admin_token: str, cluster: QuarryCluster, fleet: Fleet
) -> None:
    admin = Api(cluster, admin_token)
    admin.ok("POST", "/api/v1/secrets", 201, json={"name": "console-rotate"})
    log_in(browser, console_url, admin_token)
    browser.get(f"{console_url}/approvals")
    row = next(
        r
        for r in browser.find_elements(By.CSS_SELECTOR, "#secrets tbody tr")
        if "console-rotate" in r.text
    )
    grace = row.find_element(By.NAME, "grace_hours")
    grace.clear()
    grace.send_keys("2")
    row.find_element(By.CSS_SELECTOR, "form.rotate button").click()
    rotated = wait_for(browser, "#created-secret", "Rotated secret console-rotate")
    assert "2 more hours" in rotated.text  # type: ignore[attr-defined]
    # A staged rollout, aborted then promoted from the config page.
    live = admin.ok("GET", "/api/v1/config")["live"]
    for interval, action in ((301, "abort"), (302, "promote")):
        state = {
            **live["state"],
            "labels": {"rollout-label": {"query": "SELECT 1", "interval": interval}},
        }
        admin.ok("POST", "/api/v1/config/apply", json={"state": state, "canary_percent": 50})
        browser.get(f"{console_url}/config")
        wait_for(browser, "#rollout", "in progress")
        browser.find_element(By.CSS_SELECTOR, f"#{action} button").click()
        wait_for(browser, ".flash.ok", f"rollout {action}")  # aborted, promoted
        assert browser.find_elements(By.ID, "rollout") == []
    promoted = admin.ok("GET", "/api/v1/config")["live"]
    assert promoted["state"]["labels"]["rollout-label"]["interval"] == 302
    # Roll back to the state before both.
    row = next(
        r
        for r in browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
        if r.text.split()[0] == str(live["version"])
    )
    row.find_element(By.NAME, "confirm").click()
    row.find_element(By.CSS_SELECTOR, "form.rollback button").click()
    wait_for(browser, ".flash.ok", f"version {live['version']}'s state is live again")
    assert admin.ok("GET", "/api/v1/config")["live"]["state"] == live["state"]


def test_carves_are_listed_with_a_download_link(
    browser: WebDriver, console_url: str, admin_token: str, cluster: QuarryCluster
) -> None:
    data = b"a carved file\n" * 2000
    session = carve_from_a_new_host(Api(cluster, admin_token), cluster, 8, data)
    log_in(browser, console_url, admin_token)
    eventually(
        lambda: (
            browser.get(f"{console_url}/carves")
            or session in (browser.find_element(By.ID, "carves").get_attribute("innerHTML") or "")
        )
    )
    link = browser.find_element(By.CSS_SELECTOR, f'a.download[href="/carves/{session}/download"]')
    assert "complete" in browser.find_element(By.ID, "carves").text and link
    with client_as(browser, console_url, cluster) as client:
        response = client.get(f"/carves/{session}/download")
        assert response.status_code == 200 and response.content == data
        assert response.headers["content-disposition"].startswith("attachment;")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


# --- roles, injection, CSRF -----------------------------------------------------------


# Every change the console offers (path template, a form an admin could send).
CHANGES = [
    ("/hosts/{host}/{action}", {}),
    ("/queries", {"sql": "SELECT 1"}),
    ("/queries/{query}/cancel", {}),
    ("/secrets", {"name": "refused"}),
    ("/secrets/{secret}/revoke", {}),
    ("/secrets/{secret}/rotate", {"grace_hours": "1"}),
    ("/config/apply", {"state": "{}", "dry_run": "1"}),
    ("/config/versions/{version}/rollback", {}),
    ("/config/rollout/{action}", {}),
    ("/tokens", {"name": "refused", "role": "admin"}),
    ("/tokens/{token}/revoke", {}),
    ("/detections/{rule}/test", {}),
]
OPERATOR_MAY = {"/queries", "/queries/{query}/cancel", "/detections/{rule}/test"}
# What an operator's allowed change answers when it is not a redirect: no rule is live on
# this cluster, so the test is refused as not found, past the role check.
OPERATOR_STATUS = {"/detections/{rule}/test": 404}


def test_every_change_of_the_console_is_in_the_refusal_tests() -> None:
    posted = {
        route.path
        for route in console_routes(Console(lambda: None))  # type: ignore[arg-type, return-value]
        if isinstance(route, Route) and "POST" in (route.methods or ())
    }
    assert posted - {"/login", "/logout"} == {path for path, _ in CHANGES}


def change_paths(cluster: QuarryCluster, admin_token: str, fleet: Fleet) -> list[tuple]:
    """(template, path, form) of each change, its path filled in for a real host, query
    and secret; one per action for hosts."""
    query = Api(cluster, admin_token).ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT 1"})
    values = {"host": fleet.nodes[2].host_identifier, "query": query["campaign_id"]}
    values["secret"] = "default"
    values["token"] = "root"
    values["version"] = "1"
    values["rule"] = "given"
    out = []
    for template, form in CHANGES:
        actions: tuple[str, ...] = ("",)
        if template.startswith("/hosts/"):
            actions = ("approve", "reject", "revoke")
        elif template.startswith("/config/rollout/"):
            actions = ("promote", "abort")
        out += [(template, template.format(**values, action=a), form) for a in actions]
    return out


def test_a_read_only_session_sees_no_change_and_is_refused_every_one(
    browser: WebDriver, console_url: str, cluster: QuarryCluster, admin_token: str, fleet: Fleet
) -> None:
    token = token_of_role(Api(cluster, admin_token), "read-only")
    log_in(browser, console_url, token)
    assert "(read-only)" in browser.find_element(By.ID, "who").text
    carve = carve_from_a_new_host(Api(cluster, admin_token), cluster, 7, b"read-only\n" * 900)
    for path, hidden in (
        ("/queries", "#launch"),
        ("/approvals", "form.create"),
        ("/approvals", "form.rotate"),
        ("/config", "#apply"),
        ("/config", "form.rollback"),
        ("/carves", "a.download"),
    ):
        browser.get(f"{console_url}{path}")
        assert browser.find_elements(By.CSS_SELECTOR, hidden) == [], path
    assert "Audit log" not in browser.find_element(By.TAG_NAME, "nav").text
    # Reading works: a host (its status_logs read as read-only), a live query's page.
    host = fleet.nodes[2].host_identifier
    browser.get(f"{console_url}/hosts/{host}")
    wait_for(browser, "#host-errors")
    assert browser.find_elements(By.CSS_SELECTOR, "main form") == []
    started = Api(cluster, admin_token).ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT 1"})
    browser.get(f"{console_url}/queries/{started['campaign_id']}")
    wait_for(browser, "#live")
    assert browser.find_elements(By.CSS_SELECTOR, "main form") == []
    csrf = csrf_of(browser)
    with client_as(browser, console_url, cluster) as client:
        for _, path, form in change_paths(cluster, admin_token, fleet):
            response = client.post(path, data={"csrf": csrf, **form})
            assert response.status_code == 403, (path, response.text)
            assert "read-only" in response.text and "may not call" in response.text, path
        assert client.get("/audit").status_code == 403
        assert client.get("/tokens").status_code == 403
        refused = client.get(f"/carves/{carve}/download")
        assert refused.status_code == 403 and "needs operator" in refused.text
    assert Api(cluster, admin_token).ok("GET", f"/api/v1/hosts/{host}")["host"]["status"] == (
        "active"
    )


def test_an_admin_makes_a_token_and_logs_in_with_it(
    browser: WebDriver, console_url: str, admin_token: str
) -> None:
    log_in(browser, console_url, admin_token)
    browser.get(f"{console_url}/tokens")
    form = browser.find_element(By.CSS_SELECTOR, "form.create")
    form.find_element(By.NAME, "name").send_keys("console-alice")
    form.find_element(By.NAME, "expires_in_hours").send_keys("soon")
    form.find_element(By.CSS_SELECTOR, "button").click()
    assert "whole number of hours" in wait_for(browser, "#error-message").text  # type: ignore[attr-defined]
    browser.get(f"{console_url}/tokens")
    form = browser.find_element(By.CSS_SELECTOR, "form.create")
    form.find_element(By.NAME, "name").send_keys("console-alice")
    form.find_element(By.NAME, "expires_in_hours").send_keys("8")
    form.find_element(By.CSS_SELECTOR, "button").click()
    value = wait_for(browser, "#created-token code").text  # type: ignore[attr-defined]
    assert "console-alice" in browser.find_element(By.ID, "tokens").text
    browser.find_element(By.CSS_SELECTOR, ".who button").click()
    wait_for(browser, "#token")
    log_in(browser, console_url, value)
    assert "console-alice (read-only)" in browser.find_element(By.ID, "who").text


def test_an_operator_session_runs_live_queries_and_is_refused_admin_changes(
    browser: WebDriver, console_url: str, cluster: QuarryCluster, admin_token: str, fleet: Fleet
) -> None:
    token = token_of_role(Api(cluster, admin_token), "operator")
    log_in(browser, console_url, token)
    browser.get(f"{console_url}/queries")
    assert browser.find_elements(By.ID, "launch")
    browser.get(f"{console_url}/approvals")
    assert browser.find_elements(By.CSS_SELECTOR, "form.create") == []
    csrf = csrf_of(browser)
    with client_as(browser, console_url, cluster) as client:
        for template, path, form in change_paths(cluster, admin_token, fleet):
            response = client.post(path, data={"csrf": csrf, **form})
            if template in OPERATOR_MAY:
                expected = OPERATOR_STATUS.get(template, 303)
                assert response.status_code == expected, (path, response.text)
            else:
                assert response.status_code == 403, (path, response.text)
                assert "(operator) may not call" in response.text, path


def test_a_hostname_with_html_and_script_is_shown_as_text(
    browser: WebDriver, console_url: str, admin_token: str, fleet: Fleet
) -> None:
    log_in(browser, console_url, admin_token)
    wait_for(browser, "#hosts-table", INJECTED_HOSTNAME)
    assert browser.title != "owned"
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main script") == []
    browser.find_element(By.PARTIAL_LINK_TEXT, "<img").click()
    assert INJECTED_HOSTNAME in wait_for(browser, "#host-name").text  # type: ignore[attr-defined]
    assert browser.title != "owned" and browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert "&lt;script&gt;" in browser.page_source


def test_sql_injection_in_the_search_and_the_path_is_inert(
    browser: WebDriver, console_url: str, admin_token: str, fleet: Fleet
) -> None:
    log_in(browser, console_url, admin_token)
    for text in ("' OR 1=1 --", "x') UNION SELECT name FROM system.tables --"):
        browser.get(f"{console_url}/hosts?q={quote(text, safe='')}")
        assert wait_for(browser, "#hosts-table .count").text == "0 hosts"  # type: ignore[attr-defined]
        assert browser.find_element(By.ID, "q").get_attribute("value") == text
        browser.get(f"{console_url}/hosts/{quote(text, safe='')}")
        wait_for(browser, "#error-message")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
    browser.get(f"{console_url}/hosts")
    wait_for(browser, "#hosts-table", f"{FLEET_SIZE}")


def test_a_change_without_the_csrf_token_is_refused(
    browser: WebDriver, console_url: str, admin_token: str, cluster: QuarryCluster, fleet: Fleet
) -> None:
    log_in(browser, console_url, admin_token)
    host = fleet.nodes[2].host_identifier
    with client_as(browser, console_url, cluster) as client:
        for form in ({}, {"csrf": "not-this-sessions-token"}):
            response = client.post(f"/hosts/{host}/revoke", data=form)
            assert response.status_code == 403 and "CSRF" in response.text
        logout = client.post("/logout", data={})
        assert logout.status_code == 403
    admin = Api(cluster, admin_token)
    assert admin.ok("GET", f"/api/v1/hosts/{host}")["host"]["status"] == "active"
    # Nor can a login be forced without the login form's own token.
    with httpx.Client(
        base_url=console_url, verify=ssl.create_default_context(cafile=cluster.ca_cert)
    ) as anonymous:
        response = anonymous.post("/login", data={"token": admin_token})
        assert response.status_code == 403 and "__Host-quarry_session" not in response.headers.get(
            "set-cookie", ""
        )


def test_without_javascript_every_form_still_works(
    tmp_path: Path, console_url: str, admin_token: str, fleet: Fleet
) -> None:
    browser = new_browser(tmp_path / "chromium-no-js", javascript=False)
    try:
        log_in(browser, console_url, admin_token)
        node = fleet.nodes[2]
        browser.find_element(By.ID, "q").send_keys(node.profile.hostname)
        browser.find_element(By.CSS_SELECTOR, "#host-filters button").click()
        wait_for(browser, "#hosts-table .count", "1 host")
        assert "counted when JavaScript is on" in _text_of(browser, f"{console_url}/queries")
        browser.find_element(By.ID, "sql").send_keys("SELECT * FROM users")
        browser.find_element(By.NAME, "hosts").send_keys(node.host_identifier)
        browser.find_element(By.ID, "run").click()
        wait_for(browser, "#live")
        assert browser.find_element(By.ID, "live").get_attribute("data-state") is None
        shown = eventually(
            lambda: (
                browser.refresh()
                or (
                    # Rows are stored before the host's answer is recorded: wait for both.
                    len(browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr")) == 2
                    and browser.find_element(By.ID, "done-state").text == "done"
                )
            )
        )
        assert shown, browser.find_element(By.TAG_NAME, "main").text
    finally:
        browser.quit()


def _text_of(browser: WebDriver, url: str) -> str:
    browser.get(url)
    return browser.find_element(By.TAG_NAME, "main").text
