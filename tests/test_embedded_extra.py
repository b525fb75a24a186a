"""chdb is an extra: a server without it runs on a ClickHouse server, and says what to
install when it is asked for the embedded store.

The processes here run with chdb made unimportable (a sitecustomize that blocks it, as if
the `embedded` extra were not installed), everything else as installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from quarry.runtime.embedded_clickhouse import CHDB_MISSING
from tests.free_ports import free_port_base
from tests.service_processes import REPO_ROOT, ServiceProcess

EXIT_TIMEOUT_S = 60


def without_chdb(tmp_path: Path) -> dict[str, str]:
    """Environment whose Python processes cannot import chdb."""
    blocker = tmp_path / "no-chdb"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text("import sys\n\nsys.modules['chdb'] = None\n")
    path = os.pathsep.join(
        filter(None, [str(blocker), str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    return {"PYTHONPATH": path}


def run_without_chdb(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **without_chdb(tmp_path),
        "QUARRY_STATE_DIR": str(tmp_path / "state"),
        "QUARRY_PORT_BASE": str(free_port_base()),
    }
    env.pop("QUARRY_CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "quarry", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
    )


def test_chdb_is_the_embedded_extra_and_the_tests_install_it() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("chdb")]
    assert [d for d in project["optional-dependencies"]["embedded"] if d.startswith("chdb")]
    assert "quarry[embedded]" in project["optional-dependencies"]["dev"]


def test_the_blocker_really_hides_chdb(tmp_path: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import chdb"],
        env={**os.environ, **without_chdb(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr


def test_ingest_without_chdb_or_a_server_url_says_what_to_install(tmp_path: Path) -> None:
    result = run_without_chdb(tmp_path, "serve", "ingest")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == CHDB_MISSING


def test_quarry_up_without_chdb_or_a_server_url_says_what_to_install(tmp_path: Path) -> None:
    result = run_without_chdb(tmp_path, "up")
    assert result.returncode == 1
    assert f"quarry up: {CHDB_MISSING}" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_ingest_without_chdb_serves_a_clickhouse_server(
    tmp_path: Path, clickhouse_url: str
) -> None:
    ingest = ServiceProcess(
        "ingest",
        tmp_path / "state",
        free_port_base(),
        {**without_chdb(tmp_path), "QUARRY_CLICKHOUSE_URL": clickhouse_url},
    ).start()
    try:
        port = ingest.settings.metrics_port("ingest")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            assert reply.status == 200
    finally:
        assert ingest.stop() == 0, ingest.log_text()
    assert "chdb" not in ingest.log_text()
