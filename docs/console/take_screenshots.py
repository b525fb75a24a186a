"""Screenshots of the web console's main pages for docs/console.md.

Starts a throwaway `quarry up` cluster (embedded chdb) with a few emulated osquery nodes,
logs in with Debian's chromium (Selenium, /usr/bin/chromedriver; nothing is downloaded),
runs a live query, uploads two carves, and saves one PNG per page next to this file:

    .venv/bin/python docs/console/take_screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from quarry.runtime.settings import PORT_OFFSETS  # noqa: E402
from tests.quarry_cluster import quarry_cluster  # noqa: E402
from tests.test_api import Api, Fleet, carve_from_a_new_host  # noqa: E402
from tests.test_console import log_in, new_browser  # noqa: E402

HOSTS = 6


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="quarry-screenshots-") as tmp:
        root = Path(tmp)
        (root / "cluster").mkdir()
        with quarry_cluster(root / "cluster") as cluster:
            url = f"https://localhost:{cluster.port_base + PORT_OFFSETS['api_port']}"
            token = (cluster.state_dir / "admin_token").read_text().strip()
            admin = Api(cluster, token)
            state = admin.ok("GET", "/api/v1/config")["live"]["state"]
            state["labels"] = {"linux-servers": {"query": "SELECT 1", "interval": 300}}
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


def save(browser, name: str) -> None:
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(max(700, height + 40), 1600))
    browser.save_screenshot(str(HERE / f"{name}.png"))
    print(f"wrote docs/console/{name}.png")


if __name__ == "__main__":
    main()
