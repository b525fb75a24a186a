"""The layering rule of docs/architecture.md: quarry/ (the layer below the services)
imports no service package, directly or by name through importlib; the CLI reaches a
service over gRPC or by running its process (quarry/service_entry.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from quarry.service_entry import SERVICE_PACKAGES, service_of

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_PACKAGE_NAMES = frozenset(SERVICE_PACKAGES.values())


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "quarry").glob("*.py")), ids=lambda p: p.name)
def test_quarry_imports_no_service(path: Path) -> None:
    modules = imported_modules(path)
    assert [m for m in modules if m.split(".")[0] in SERVICE_PACKAGE_NAMES] == []
    assert "importlib" not in modules


def test_each_service_package_is_its_own_entry_point() -> None:
    for service, package in SERVICE_PACKAGES.items():
        assert (REPO_ROOT / package / "__main__.py").is_file()
        assert service_of([sys.executable, "-m", package]) == service
    assert service_of([sys.executable, "-m", "quarry", "serve", "gateway"]) is None


def test_a_stateful_service_migrates_its_own_state(tmp_path: Path) -> None:
    """`python -m enroll_service migrate --json`, what `quarry migrate` runs, applies only
    the enroll service's components, once."""
    command = [sys.executable, "-m", "enroll_service", "migrate", "--json"]
    env = {"QUARRY_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run() -> dict:
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = run()
    assert {m["component"].split(".")[0] for m in first["migrations"]} == {"enroll"}
    assert {m["status"] for m in first["migrations"]} == {"applied"}
    assert first["database"].endswith("enroll.sqlite3")
    assert {m["status"] for m in run()["migrations"]} == {"already applied"}


def test_quarry_migrate_says_why_a_service_could_not_migrate(tmp_path: Path) -> None:
    """The service's own process refuses the database; `quarry migrate` says why in one
    line and exits 1, as when it migrated in its own process."""
    done = subprocess.run(
        [sys.executable, "-m", "quarry", "--state-dir", str(tmp_path), "migrate"],
        cwd=REPO_ROOT,
        env={"QUARRY_DATABASE_URL": "mysql://db/quarry", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "quarry migrate: QUARRY_DATABASE_URL must be a"
        " postgresql://user:password@host:port/database URL\n"
    )
    assert done.stdout == ""
