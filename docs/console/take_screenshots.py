"""Screenshots of the web console's main pages for docs/console.md.

Starts a throwaway `quarry up` cluster (embedded chdb) with a few emulated osquery nodes,
logs in with Debian's chromium (Selenium, /usr/bin/chromedriver; nothing is downloaded),
runs a live query, uploads two carves, has two hosts run a binary from /tmp (an alert of
the starter rule processes-from-tmp), and saves one PNG per page next to this file:

    .venv/bin/python docs/console/take_screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from quarry.runtime.settings import PORT_OFFSETS  # noqa: E402
from tests.quarry_cluster import quarry_cluster  # noqa: E402
from tests.test_api import Api, Fleet, carve_from_a_new_host  # noqa: E402
from tests.test_console import log_in, new_browser  # noqa: E402
from tests.test_detections import RULE, STARTER, log_processes  # noqa: E402

HOSTS = 6
# Short delays: the rule runs soon after the rows arrive (defaults: quarry/runtime/settings.py).
DETECTION_ENV = {"QUARRY_DETECTION_SETTLE_S": "2", "QUARRY_INGEST_FLUSH_INTERVAL_S": "0.2"}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="quarry-screenshots-") as tmp:
        root = Path(tmp)
        (root / "cluster").mkdir()
        with quarry_cluster(root / "cluster", "", DETECTION_ENV) as cluster:
            url = f"https://localhost:{cluster.port_base + PORT_OFFSETS['api_port']}"
            token = (cluster.state_dir / "admin_token").read_text().strip()
            admin = Api(cluster, token)
            state = admin.ok("GET", "/api/v1/config")["live"]["state"]
            state["labels"] = {"linux-servers": {"query": "SELECT 1", "interval": 300}}
            rule = yaml.safe_load(STARTER.read_text())["detections"][RULE]
            state["detections"] = {RULE: {**rule, "schedule": 5}}
            admin.ok("POST", "/api/v1/config/apply", json={"state": state, "comment": "labels"})
            # A second version, staged to half the fleet: the config page's rollout actions.
            state["labels"]["linux-servers"]["interval"] = 600
            staged = {"state": state, "comment": "slower labels", "canary_percent": 50}
            admin.ok("POST", "/api/v1/config/apply", json=staged)
            pending = admin.ok(
                "POST", "/api/v1/secrets", 201, json={"name": "lab", "requires_approval": True}
            )
            for number in range(2):
                carve_from_a_new_host(
                    admin, cluster, number, b"carved bytes\n" * 5000 * (1 + number)
                )
            raise_alerts(cluster, admin)
            with (
                Fleet(cluster, cluster.enroll_secret, HOSTS),
                Fleet(cluster, pending["value"], 2, first=HOSTS),
            ):
                browser = new_browser(root / "chromium")
                try:
                    shoot(browser, url, token)
                finally:
                    browser.quit()


def shoot(browser, url: str, token: str) -> None:
    log_in(browser, url, token)
    save(browser, "hosts")
    browser.find_element(By.CSS_SELECTOR, "a.host-link").click()
    save(browser, "host")
    browser.get(f"{url}/queries")
    browser.find_element(By.ID, "sql").send_keys("SELECT uid, username, shell FROM users")
    browser.find_element(By.NAME, "platforms").send_keys("linux")
    time.sleep(1.5)  # the target count fills in
    save(browser, "live-query-form")
    browser.find_element(By.ID, "run").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "done"
    )
    save(browser, "live-query")
    for page in ("approvals", "config", "labels", "carves", "tokens", "audit"):
        browser.get(f"{url}/{page}")
        save(browser, page)
    browser.get(f"{url}/alerts")
    save(browser, "alerts")
    browser.find_element(By.CSS_SELECTOR, "#alerts tbody a").click()
    save(browser, "alert")
    browser.get(f"{url}/detections")
    browser.find_element(By.CSS_SELECTOR, "form.test-rule button").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "test-result"))
    save(browser, "detections", 1000)


def raise_alerts(cluster, admin: Api) -> None:
    """Two hosts run a binary from /tmp; wait until the rule has raised both alerts."""
    for number, path in enumerate(("/tmp/.cache/kworkerd", "/dev/shm/xmrig")):
        log_processes(cluster, f"build-{number + 1:02d}", path, "/usr/sbin/sshd")
    for _ in range(120):
        if admin.ok("GET", "/api/v1/alerts")["total"] >= 2:
            return
        time.sleep(0.5)
    raise SystemExit("the detection rule raised no alert in 60 s")


def save(browser, name: str, height: int = 0) -> None:
    """The page at its own height (or the height given, for a page chromium measures short:
    the detections page after its test form's POST)."""
    browser.set_window_size(1400, 700)  # the page's own height, not the last window's
    height = height or browser.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
    )
    browser.set_window_size(1400, min(max(700, height + 40), 1600))
    browser.save_screenshot(str(HERE / f"{name}.png"))
    print(f"wrote docs/console/{name}.png")


if __name__ == "__main__":
    main()
