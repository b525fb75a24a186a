"""The layering rule of docs/architecture.md: quarry/ (the layer below the services)
imports no service package, directly or by name through importlib; the CLI reaches a
service over gRPC or by running its process (quarry/serving/service_entry.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from quarry.serving.service_entry import SERVICE_PACKAGES, service_of

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


QUARRY_MODULES = sorted((REPO_ROOT / "quarry").rglob("*.py"))
# quarry/'s layers, lowest first (docs/architecture.md): a module imports from its own
# layer or lower ones; the command line (cli) is the top and nothing below imports it.
LAYERS = ["runtime", "state", "access", "encryption", "serving", "cli"]
LAYER_RANK = {"runtime": 0, "state": 1, "access": 2, "encryption": 2, "serving": 3, "cli": 4}


def _name(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.mark.parametrize("path", QUARRY_MODULES, ids=_name)
def test_quarry_imports_no_service(path: Path) -> None:
    modules = imported_modules(path)
    assert [m for m in modules if m.split(".")[0] in SERVICE_PACKAGE_NAMES] == []
    assert "importlib" not in modules


def _layer(parts: list[str]) -> str | None:
    """The layer of a module path under quarry/ (None for quarry/__init__ and __main__)."""
    return parts[1] if len(parts) > 2 and parts[1] in LAYER_RANK else None


@pytest.mark.parametrize("path", QUARRY_MODULES, ids=_name)
def test_a_quarry_layer_imports_only_itself_and_lower_layers(path: Path) -> None:
    own = _layer(list(path.relative_to(REPO_ROOT).with_suffix("").parts))
    if own is None:
        return
    upward = [
        module
        for module in imported_modules(path)
        if module.startswith("quarry.")
        and (layer := _layer(module.split("."))) is not None
        and LAYER_RANK[layer] > LAYER_RANK[own]
    ]
    assert upward == [], f"{_name(path)} ({own}) imports a higher layer"


def test_every_quarry_module_is_in_a_layer() -> None:
    loose = [p.name for p in (REPO_ROOT / "quarry").glob("*.py")]
    assert sorted(loose) == ["__init__.py", "__main__.py"]
    assert sorted(
        p.name for p in (REPO_ROOT / "quarry").iterdir() if p.is_dir() and p.name != "__pycache__"
    ) == sorted(LAYERS)


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
