"""The `quarry` command as operators use it, against one real cluster started by `quarry up`.

Each test drives the real command in a subprocess: `quarry sql` (one statement, its
formats and row limit), finding the cluster from its state directory alone, output
closed early, `quarry carve start` on a fresh install (no carve store yet), two
`quarry up` started together, `quarry up` started again on its state directory's record,
and a shutdown that loses no check-ins. The last test
stops the module's cluster.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.osquery_api import routes
from tests.emulator import HostProfile, OsqueryNode
from tests.emulator.tables import QueryOutcome, TableExecutor
from tests.free_ports import free_port_base
from tests.quarry_cluster import READY_LINE, QuarryCluster, quarry_cluster

# Check-ins wait this long in the gateway before it records them: at shutdown they are
# still waiting, so the gateway's last flush needs the enroll service still up.
SLOW_CHECKIN_FLUSH = {"QUARRY_CHECKIN_FLUSH_INTERVAL_S": "600"}
NUMBERS_SQL = "SELECT number, toString(number) AS text FROM system.numbers LIMIT 1500"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    folder = tmp_path_factory.mktemp("cli-operations")
    with quarry_cluster(folder, extra_env=SLOW_CHECKIN_FLUSH) as running:
        yield running


def quarry_in(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quarry", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def without_ports(cluster: QuarryCluster) -> dict[str, str]:
    """The cluster's environment without anything saying where it listens."""
    env = {k: v for k, v in cluster.env().items() if k != "QUARRY_PORT_BASE"}
    del env["QUARRY_STATE_DIR"]
    return env


def new_node(cluster: QuarryCluster, number: int) -> OsqueryNode:
    profile = HostProfile.make(number, seed=cluster.port_base)
    return OsqueryNode(
        server=cluster.gateway, ca_file=cluster.ca_cert, enroll_secret=cluster.enroll_secret,
        profile=profile, host_identifier=profile.hardware_uuid.lower(), retry_time_scale=0,
    )  # fmt: skip


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- quarry sql ---------------------------------------------------------------------------


def test_several_statements_are_refused_in_one_clear_line(cluster: QuarryCluster) -> None:
    result = cluster.cli("sql", "SELECT 1; SELECT 2", check=False)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        "quarry sql: 2 statements: quarry sql runs one statement at a time;"
        " run each with its own quarry sql"
    )
    # A ';' at the end, in a string or in a comment is no second statement.
    rows = cluster.sql("SELECT 'a;b' AS s -- ; not one\n;")
    assert rows == [{"s": "a;b"}]


def test_a_sql_error_is_clickhouses_message_on_one_line(cluster: QuarryCluster) -> None:
    result = cluster.cli("sql", "SELEC 1", check=False)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("quarry sql: ")
    assert "Syntax error" in line and "Stack trace" not in line


def test_text_output_stops_at_the_default_limit_and_says_so(cluster: QuarryCluster) -> None:
    result = cluster.cli("sql", NUMBERS_SQL)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["number", "text"]
    assert lines[-1] == "(1000 rows)"
    assert len(lines) == 1002
    assert "1000 of 1500 rows shown (--limit 1000); --limit 0 shows all" in result.stderr
    everything = cluster.cli("sql", NUMBERS_SQL, "--limit", "0")
    assert everything.stdout.splitlines()[-1] == "(1500 rows)"
    assert everything.stderr == ""


def test_csv_tsv_and_json_lines(cluster: QuarryCluster) -> None:
    query = "SELECT number AS n, concat('a,', toString(number)) AS s FROM system.numbers LIMIT 3"
    as_csv = cluster.cli("sql", query, "--format", "csv").stdout
    assert list(csv.reader(io.StringIO(as_csv))) == [
        ["n", "s"], ["0", "a,0"], ["1", "a,1"], ["2", "a,2"],
    ]  # fmt: skip
    as_tsv = cluster.cli("sql", query, "--format", "tsv").stdout
    assert as_tsv.splitlines() == ["n\ts", "0\ta,0", "1\ta,1", "2\ta,2"]
    as_lines = cluster.cli("sql", query, "--format", "json").stdout.splitlines()
    assert [json.loads(line) for line in as_lines] == [
        {"n": 0, "s": "a,0"}, {"n": 1, "s": "a,1"}, {"n": 2, "s": "a,2"},
    ]  # fmt: skip
    cut = cluster.cli("sql", query, "--format", "json", "--limit", "2")
    assert len(cut.stdout.splitlines()) == 2
    assert "2 of 3 rows shown" in cut.stderr


# --- finding the cluster from its state directory ------------------------------------------


def test_the_state_directory_alone_finds_the_cluster(cluster: QuarryCluster) -> None:
    record = json.loads((cluster.state_dir / "cluster.json").read_text())
    assert record["port_base"] == cluster.port_base
    assert record["settings"]["QUARRY_ENROLL_PORT"] == str(cluster.port_base + 1)

    env = without_ports(cluster)
    found = quarry_in(env, "--state-dir", str(cluster.state_dir), "secret", "list", "--json")
    assert found.returncode == 0, found.stderr
    assert found.stderr == ""
    flags = quarry_in(env, "--state-dir", str(cluster.state_dir), "flags").stdout.splitlines()
    assert f"--tls_hostname=localhost:{cluster.port_base}" in flags


def test_an_explicit_port_base_wins_and_a_mismatch_is_noted(cluster: QuarryCluster) -> None:
    env = without_ports(cluster)
    other = str(free_port_base())
    result = quarry_in(env, "--state-dir", str(cluster.state_dir), "--port-base", other, "flags")
    assert result.returncode == 0, result.stderr
    assert f"--tls_hostname=localhost:{other}" in result.stdout.splitlines()
    assert one_line(result.stderr) == (
        f"quarry: note: the quarry up running on {cluster.state_dir} (pid"
        f" {cluster.process.pid}) uses --port-base {cluster.port_base};"  # type: ignore[union-attr]
        f" this command uses --port-base {other}"
    )


def test_a_mistyped_state_directory_is_one_line_and_creates_nothing(
    cluster: QuarryCluster, tmp_path: Path
) -> None:
    wrong = tmp_path / "no-such-state"
    env = without_ports(cluster)
    for command in (["node", "list"], ["flags"], ["migrate", "--dry-run"], ["sql", "SELECT 1"]):
        result = quarry_in(env, "--state-dir", str(wrong), *command)
        assert result.returncode == 1, command
        line = one_line(result.stderr)
        assert line.startswith(f"quarry {command[0]}: no state directory {wrong}"), line
        assert line.count("no state directory") == 1
    assert not wrong.exists()


# --- quarry flags -------------------------------------------------------------------------


def test_flags_say_what_the_config_does_and_what_carving_needs(cluster: QuarryCluster) -> None:
    flags = dict(
        line.removeprefix("--").split("=", 1) for line in cluster.cli("flags").stdout.splitlines()
    )
    node = new_node(cluster, 3)

    async def fetch() -> dict:
        async with node:
            return await node.fetch_config() or {}

    options = asyncio.run(fetch())["options"]  # the built-in config, which wins over flags
    assert flags["distributed_interval"] == str(options["distributed_interval"])
    assert flags["logger_tls_period"] == str(options["logger_tls_period"])
    assert flags["disable_carver"] == "false"
    assert int(flags["carver_block_size"]) <= 2 * 1024 * 1024  # QUARRY_CARVE_MAX_BLOCK_BYTES
    paths = set(routes())
    for endpoint in ("carver_start_endpoint", "carver_continue_endpoint"):
        assert flags[endpoint] in paths


def test_an_unreachable_service_is_named_once_with_its_address(tmp_path: Path) -> None:
    base = free_port_base()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    result = quarry_in(env, "--state-dir", str(tmp_path), "--port-base", str(base), "node", "list")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(
        f"quarry node: UNAVAILABLE: cannot reach 127.0.0.1:{base + 1} (Connection refused);"
    ), line
    assert "failed to connect" not in line.lower()


# --- output closed early -------------------------------------------------------------------


def closed_output(cluster: QuarryCluster, *args: str) -> tuple[int, str]:
    """Run `quarry ARGS` with its stdout closed before it writes, as `| head -0` does."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.run(
            [sys.executable, "-m", "quarry", *args], env=cluster.env(), stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return process.returncode, process.stderr


def test_a_closed_output_ends_the_command_quietly_with_141(cluster: QuarryCluster) -> None:
    for command in (["audit", "list", "--json"], ["config", "show"], ["flags"]):
        code, stderr = closed_output(cluster, *command)
        assert code == 141, (command, stderr)
        assert stderr == "", command


def test_a_rotated_secret_comes_first_and_a_lost_one_is_said_so(cluster: QuarryCluster) -> None:
    cluster.cli("secret", "create", "rotated-early")
    piped = subprocess.run(
        f"{sys.executable} -m quarry secret rotate rotated-early --json | head -3",
        shell=True, env=cluster.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    first_lines = piped.stdout.splitlines()
    assert first_lines[0] == "{"
    assert first_lines[1].startswith('  "value": "') and len(first_lines[1]) > 40
    assert "Traceback" not in piped.stderr

    code, stderr = closed_output(cluster, "secret", "rotate", "rotated-early")
    assert code == 141
    assert one_line(stderr).startswith("quarry: the output closed before the value")


# --- carve start on a fresh install --------------------------------------------------------


def test_carve_start_waits_for_the_first_carve_ever_with_progress(
    cluster: QuarryCluster,
) -> None:
    assert not (cluster.state_dir / "carves" / "index.sqlite3").exists()  # a fresh install
    node = new_node(cluster, 1)
    asyncio.run(_enroll(node))
    node_id = next(
        n["node_id"]
        for n in cluster.cli_json("node", "list")  # type: ignore[union-attr]
        if n["host_identifier"] == node.host_identifier
    )
    command = subprocess.Popen(
        [sys.executable, "-m", "quarry", "carve", "start", node_id, "/etc/hosts", "--json"],
        env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        carve_guid = str(uuid.uuid4())
        asyncio.run(_answer_carve_query(node, carve_guid))
        time.sleep(2)  # osquery uploads at the next minute: the command waits meanwhile
        assert command.poll() is None, command.communicate()
        assert asyncio.run(_carve(node, b"x" * 5000, carve_guid)).ok
        stdout, stderr = command.communicate(timeout=120)
    finally:
        command.kill()
    assert command.returncode == 0, stderr
    assert json.loads(stdout)["carve"]["status"] == "complete"
    assert f"waiting for the host to start uploading carve {carve_guid}" in stderr
    assert "Traceback" not in stderr


async def _enroll(node: OsqueryNode) -> str:
    async with node:
        return await node.get_node_key()


async def _carve(node: OsqueryNode, data: bytes, carve_guid: str):
    async with node:
        return await node.carve(data, carve_guid)


async def _answer_carve_query(node: OsqueryNode, carve_guid: str) -> None:
    """Distributed reads until the carves-table query arrives; answer it as osquery does."""
    tables = TableExecutor(node.profile)
    asked: list[str] = []

    def execute(sql: str) -> QueryOutcome:
        if "FROM carves" not in sql:
            return tables(sql)
        asked.append(sql)
        row = {"time": "1736072430", "sha256": "", "size": "-1", "path": "/etc/hosts",
               "status": "SCHEDULED", "carve_guid": carve_guid,
               "request_id": str(uuid.uuid4()), "carve": "1"}  # fmt: skip
        return QueryOutcome(rows=[row])

    async with node:
        for _ in range(300):
            round_ = await node.run_distributed_once(execute)
            if asked and round_.written:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the carve query never reached the node")


# --- quarry up: two at once, started again, and shutdown ----------------------------------


def start_up(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quarry", "up"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_two_quarry_up_started_together_leave_one_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    env.update(QUARRY_STATE_DIR=str(tmp_path / "state"), QUARRY_PORT_BASE=str(free_port_base()))
    ups = [start_up(env), start_up(env)]
    try:
        deadline = time.monotonic() + 60
        while all(up.poll() is None for up in ups) and time.monotonic() < deadline:
            time.sleep(0.1)
        [refused] = [up for up in ups if up.poll() is not None]
        [running] = [up for up in ups if up is not refused]
        output = refused.communicate(timeout=10)[0]
        assert refused.returncode == 1
        assert output.strip() == (
            f"quarry up: already running on {tmp_path / 'state'} (pid {running.pid}); "
            f"stop it (Ctrl-C, or kill {running.pid}) or use another --state-dir"
        )
        assert running.poll() is None
    finally:
        for up in ups:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                up.communicate(timeout=60)


def up_until_ready(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """`quarry up` running, and the lines it printed (still collected, so its pipe never fills)."""
    process = start_up(env)
    lines: list[str] = []
    ready = threading.Event()

    def collect() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if READY_LINE in line:
                ready.set()

    threading.Thread(target=collect, daemon=True).start()
    deadline = time.monotonic() + 120
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_up(process)
            raise AssertionError("quarry up did not start:\n" + "\n".join(lines))
    return process, lines


def stop_up(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_quarry_up_started_again_listens_where_its_record_says(tmp_path: Path) -> None:
    """The record admin commands read is also where `quarry up` comes back without
    --port-base; an explicit one moves it, and both are said."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith("QUARRY_")}
    state = tmp_path / "state"
    first = free_port_base()
    up, _ = up_until_ready(
        {**plain, "QUARRY_STATE_DIR": str(state), "QUARRY_PORT_BASE": str(first)}
    )
    stop_up(up)

    up, lines = up_until_ready({**plain, "QUARRY_STATE_DIR": str(state)})
    try:
        assert (
            f"quarry up: listening on --port-base {first}, as the last quarry up on {state}"
            " did (cluster.json); give --port-base to move"
        ) in lines
        assert f"  osquery gateway   https://localhost:{first}" in lines
        found = quarry_in(plain, "--state-dir", str(state), "secret", "list", "--json")
        assert (found.returncode, found.stderr) == (0, "")
        flags = quarry_in(plain, "--state-dir", str(state), "flags").stdout.splitlines()
        assert f"--tls_hostname=localhost:{first}" in flags
    finally:
        stop_up(up)

    moved = free_port_base()
    up, lines = up_until_ready(
        {**plain, "QUARRY_STATE_DIR": str(state), "QUARRY_PORT_BASE": str(moved)}
    )
    try:
        assert (
            f"quarry up: note: moving from --port-base {first}, where the last quarry up on"
            f" {state} listened, to --port-base {moved}; osquery's flags change with it"
            " (`quarry flags`)"
        ) in lines
        assert json.loads((state / "cluster.json").read_text())["port_base"] == moved
        flags = quarry_in(plain, "--state-dir", str(state), "flags").stdout.splitlines()
        assert f"--tls_hostname=localhost:{moved}" in flags
    finally:
        stop_up(up)


def test_shutdown_stops_the_gateway_first_and_records_its_last_check_ins(
    cluster: QuarryCluster,
) -> None:
    """Runs last: it stops the module's cluster."""
    node = new_node(cluster, 2)

    async def check_in() -> None:
        async with node:
            await node.fetch_config()
            await node.distributed_read()

    asyncio.run(check_in())
    assert cluster.process is not None
    cluster.stop()
    assert cluster.process.returncode == 0
    log = cluster.log_text()
    assert "check-ins failed" not in log, log[-3000:]
    assert "Traceback" not in log
