"""The command line as operators use it, against a real cluster and emulated nodes: hosts
named by hostname, host identifier or node id everywhere, search and platform filters,
labels, live-query listing, exit codes and JSON lines, and one JSON convention for every
command (docs/cli.md).

One cluster and one small fleet for the module. The fleet's nodes run osquery's
distributed loop in a background thread for the whole module, so every live query is
answered as on a real fleet; "mute" is enrolled and never reads, for partial answers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quarry.cli.main import build_parser
from tests.emulator import HostProfile, OsqueryNode
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, live_query_report, quarry_cluster
from tests.service_processes import REPO_ROOT

LOOP_PAUSE_S = 0.2
LABEL = "deployers"


class Fleet:
    """Emulated nodes living on one event loop in a thread; `loop_names` answer queries."""

    def __init__(self, cluster: QuarryCluster) -> None:
        self.cluster = cluster
        self.nodes: dict[str, OsqueryNode] = {}
        self.node_ids: dict[str, str] = {}
        self.looping: set[str] = set()
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, platform: str, hostname: str, loops: bool = True) -> OsqueryNode:
        profile = HostProfile.make(len(self.nodes), platform=platform, seed=self.cluster.port_base)
        profile = dataclasses.replace(profile, hostname=hostname)
        node = OsqueryNode(
            server=self.cluster.gateway,
            ca_file=self.cluster.ca_cert,
            enroll_secret=self.cluster.enroll_secret,
            profile=profile,
            host_identifier=f"{name}-{profile.hardware_uuid.lower()}",
            retry_time_scale=0,
        )
        self.nodes[name] = node
        self._run(node.get_node_key())
        if loops:
            self.looping.add(name)
            asyncio.run_coroutine_threadsafe(self._distributed_loop(node), self._loop)
        return node

    def learn_ids(self) -> None:
        listed = self.cluster.cli_json("node", "list")
        by_host = {n["host_identifier"]: n["node_id"] for n in listed}  # type: ignore[index]
        self.node_ids = {name: by_host[node.host_identifier] for name, node in self.nodes.items()}

    def upload_carve(self, name: str, data: bytes) -> str:
        """A carve uploaded by the node (as osquery does once it scheduled one); its id."""
        result = self._run(self.nodes[name].carve(data))
        assert result.ok
        return result.carve_id

    def name_of(self, host_identifier: str) -> str:
        return next(n for n, node in self.nodes.items() if node.host_identifier == host_identifier)

    async def _distributed_loop(self, node: OsqueryNode) -> None:
        while not self._stop.is_set():
            await node.run_distributed_once()
            await asyncio.sleep(LOOP_PAUSE_S)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def close(self) -> None:
        self._stop.set()
        time.sleep(LOOP_PAUSE_S * 3)
        for node in self.nodes.values():
            self._run(node.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def cluster(
    clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry-hosts"), clickhouse_url) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(cluster: QuarryCluster) -> Iterator[Fleet]:
    fleet = Fleet(cluster)
    try:
        fleet.add("alpha", "linux", "alpha-web-1")
        fleet.add("beta", "darwin", "beta-mac")
        fleet.add("twin1", "linux", "twin")
        fleet.add("twin2", "linux", "twin")
        fleet.add("mute", "windows", "mute-win", loops=False)
        fleet.nodes["alpha"].profile.users.append(("deploy", 1500))
        fleet.learn_ids()
        yield fleet
    finally:
        fleet.close()


def refused(cluster: QuarryCluster, *args: str) -> str:
    result = cluster.cli(*args, check=False)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    return result.stderr


def hosts_of(report: dict, fleet: Fleet) -> dict[str, str]:
    return {fleet.name_of(h["host_identifier"]): h["state"] for h in report["hosts"]}


# --- hosts by name ----------------------------------------------------------------------


def test_node_list_has_hostnames_and_searches_them(cluster: QuarryCluster, fleet: Fleet) -> None:
    text = cluster.cli("node", "list").stdout
    assert text.splitlines()[0].split()[:3] == ["node_id", "hostname", "host_identifier"]
    assert "alpha-web-1" in text

    def found(*args: str) -> set[str]:
        listed = cluster.cli_json("node", "list", *args)
        return {fleet.name_of(n["host_identifier"]) for n in listed}  # type: ignore[index]

    assert found("--search", "web-") == {"alpha"}
    assert found("--search", "TWIN") == {"twin1", "twin2"}  # hostname, any case
    assert found("--search", fleet.nodes["beta"].host_identifier[8:20]) == {"beta"}
    assert found("--search", fleet.node_ids["mute"][:13]) == {"mute"}
    assert found("--search", "%") == set()  # taken literally, not as a LIKE wildcard


def test_platform_filters_take_a_family_or_an_os_name(cluster: QuarryCluster, fleet: Fleet) -> None:
    def found(*args: str) -> set[str]:
        listed = cluster.cli_json("node", "list", *args)
        return {fleet.name_of(n["host_identifier"]) for n in listed}  # type: ignore[index]

    linux = {"alpha", "twin1", "twin2"}
    assert found("--platform", "linux") == linux
    assert found("--platform", "ubuntu") == linux  # the emulator's Linux is Ubuntu
    assert found("--platform", "darwin") == {"beta"}

    for platform in ("linux", "ubuntu"):
        result = cluster.cli(
            "query", "run", "SELECT 1 AS one", "--platform", platform, "--json", check=False
        )
        assert set(hosts_of(live_query_report(result), fleet)) == linux
    assert "unknown platform linx" in refused(
        cluster, "query", "run", "SELECT 1", "--platform", "linx"
    )


def test_node_show_takes_a_node_id_host_identifier_or_hostname(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    alpha = fleet.node_ids["alpha"]
    for name in (alpha, fleet.nodes["alpha"].host_identifier, "alpha-web-1", "ALPHA-WEB-1"):
        assert cluster.cli_json("node", "show", name)["node"]["node_id"] == alpha  # type: ignore[index]


NODE_COMMANDS = [
    ("node", "show"),
    ("node", "approve"),
    ("node", "reject"),
    ("node", "revoke"),
    ("config", "show", "--node"),
    ("query", "run", "SELECT 1", "--node"),
    ("carve", "start", "--no-wait"),
]


def _with_name(command: tuple[str, ...], name: str) -> list[str]:
    if command[0] == "carve":
        return [*command, name, "/etc/hosts"]
    return [*command, name]


@pytest.mark.parametrize("command", NODE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_that_takes_a_node_refuses_unknown_and_ambiguous_names(
    cluster: QuarryCluster, fleet: Fleet, command: tuple[str, ...]
) -> None:
    before = len(cluster.cli_json("query", "list", "--limit", "0", "--include-labels"))  # type: ignore[arg-type]
    unknown = refused(cluster, *_with_name(command, "nosuchnode"))
    assert "no node named 'nosuchnode': `quarry node list --search nosuchnode`" in unknown
    ambiguous = refused(cluster, *_with_name(command, "twin"))
    assert "'twin' names 2 nodes" in ambiguous
    assert fleet.node_ids["twin1"] in ambiguous and fleet.node_ids["twin2"] in ambiguous
    # Nothing was started for a name that means no node, or two.
    after = len(cluster.cli_json("query", "list", "--limit", "0", "--include-labels"))  # type: ignore[arg-type]
    assert after == before


def test_commands_that_take_a_node_accept_its_hostname(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    beta = fleet.node_ids["beta"]
    assert cluster.cli_json("config", "show", "--node", "beta-mac")["node_id"] == beta  # type: ignore[index]
    assert cluster.cli_json("node", "approve", "beta-mac")["node_id"] == beta  # type: ignore[index]
    result = cluster.cli("query", "run", "SELECT 1 AS one", "--node", "beta-mac", "--json")
    assert hosts_of(live_query_report(result), fleet) == {"beta": "ANSWERED"}
    started = cluster.cli_json("carve", "start", "beta-mac", "/etc/hosts", "--no-wait")
    campaign = cluster.cli_json("query", "show", started["campaign_id"])  # type: ignore[index]
    assert campaign["campaign"]["node_ids"] == [beta]  # type: ignore[index]


def test_query_run_refuses_a_label_that_is_not_defined(cluster: QuarryCluster) -> None:
    stderr = refused(cluster, "query", "run", "SELECT 1", "--label", "no-such-label")
    assert "unknown label no-such-label" in stderr
    assert "no active node matches" not in stderr


def test_a_zero_ttl_is_refused() -> None:
    for option in ("--ttl", "--offline-after"):
        result = subprocess.run(
            [sys.executable, "-m", "quarry", "query", "run", "SELECT 1", option, "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "'0' is not a number of seconds (1 or more)" in result.stderr


# --- labels -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(cluster: QuarryCluster, fleet: Fleet, tmp_path_factory: pytest.TempPathFactory):
    """A label whose only member is alpha (it has the user "deploy")."""
    state = {
        "blocks": {"base": {"targets": {"all": True}, "config": {}}},
        "labels": {LABEL: {"query": "SELECT 1 FROM users WHERE username = 'deploy'",
                           "interval": 1}},
    }  # fmt: skip
    path = tmp_path_factory.mktemp("labels") / "state.json"
    path.write_text(json.dumps(state))
    cluster.cli_json("config", "apply", "-f", str(path))

    def counted() -> bool:
        listed = cluster.cli_json("label", "list")
        return [(x["name"], x["members"]) for x in listed] == [(LABEL, 1)]  # type: ignore[index,union-attr]

    assert eventually(counted, 60)
    return LABEL


def test_labels_are_listed_with_their_members(
    cluster: QuarryCluster, fleet: Fleet, labelled: str
) -> None:
    text = cluster.cli("label", "list").stdout
    assert re.search(rf"^{labelled}\s+1\s+1s\s+all\s+SELECT 1 FROM users", text, re.MULTILINE)
    members = cluster.cli_json("label", "members", labelled)
    assert [(m["node_id"], m["hostname"]) for m in members] == [  # type: ignore[index,union-attr]
        (fleet.node_ids["alpha"], "alpha-web-1")
    ]
    assert "alpha-web-1" in cluster.cli("label", "members", labelled).stdout
    assert "unknown label 'nope'" in refused(cluster, "label", "members", "nope")
    result = cluster.cli("query", "run", "SELECT 1", "--label", labelled, "--json")
    assert hosts_of(live_query_report(result), fleet) == {"alpha": "ANSWERED"}


def test_query_list_is_newest_first_and_hides_label_evaluations(
    cluster: QuarryCluster, fleet: Fleet, labelled: str
) -> None:
    for n in (1, 2):
        time.sleep(1.1)  # created_at is in seconds: two in one second have no order
        cluster.cli("query", "run", f"SELECT {n} AS n", "--node", "alpha-web-1",
                    "--author", "lister", "--timeout", "30")  # fmt: skip
    default = cluster.cli_json("query", "list")
    assert default and not any(c["author"].startswith("label ") for c in default)  # type: ignore[union-attr,index]
    created = [c["created_at"] for c in default]  # type: ignore[union-attr,index]
    assert created == sorted(created, reverse=True)
    mine = cluster.cli_json("query", "list", "--author", "lister")
    assert [c["sql"] for c in mine] == ["SELECT 2 AS n", "SELECT 1 AS n"]  # type: ignore[index,union-attr]
    assert len(cluster.cli_json("query", "list", "--author", "lister", "--limit", "1")) == 1  # type: ignore[arg-type]
    every = cluster.cli_json("query", "list", "--include-labels", "--limit", "0")
    assert any(c["author"] == f"label {labelled}" for c in every)  # type: ignore[union-attr,index]
    assert cluster.cli_json("query", "list", "--status", "cancelled") == []
    text = cluster.cli("query", "list", "--author", "lister").stdout
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+lister\s+1\s+open\s+SELECT 2", text)


# --- exit codes and JSON lines ------------------------------------------------------------


def test_the_exit_code_says_whether_every_host_answered(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    ran = cluster.cli("query", "run", "SELECT 1", "--node", "alpha-web-1", check=False)
    assert ran.returncode == 0, ran.stderr
    failed = cluster.cli("query", "run", "SELECT * FROM no_such_table", "--node",
                         "alpha-web-1", "--node", "beta-mac", check=False)  # fmt: skip
    assert failed.returncode == 4, failed.stderr
    partial = cluster.cli("query", "run", "SELECT 1", "--node", "alpha-web-1", "--node",
                          "mute-win", "--timeout", "5", check=False)  # fmt: skip
    assert partial.returncode == 3, partial.stderr


def test_json_lines_stream_rows_and_host_states_as_they_come(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    # alpha answers at once; mute never does, so the command runs to its --timeout and
    # alpha's row must reach the pipe long before the end.
    command = [sys.executable, "-m", "quarry", "query", "run", "SELECT hostname FROM system_info",
               "--node", "alpha-web-1", "--node", "mute-win", "--timeout", "20",
               "--json"]  # fmt: skip
    process = subprocess.Popen(
        command, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    lines = []
    try:
        for text in process.stdout:
            lines.append(json.loads(text))
            if lines[-1]["type"] == "row":
                assert process.poll() is None  # still running: the row was not held back
                break
        rest, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    lines += [json.loads(text) for text in rest.splitlines()]
    assert process.returncode == 3
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "started" and kinds[-1] == "report"
    assert set(kinds) == {"started", "host", "row", "report"}
    [row] = [line for line in lines if line["type"] == "row"]
    assert row["host_identifier"] == fleet.nodes["alpha"].host_identifier
    assert row["node_id"] == fleet.node_ids["alpha"]
    assert row["row"] == {"hostname": "alpha-web-1"}
    states = [
        (fleet.name_of(x["host_identifier"]), x["state"]) for x in lines if x["type"] == "host"
    ]
    assert ("alpha", "ANSWERED") in states and ("mute", "TARGETED") in states
    report = lines[-1]
    assert report["counts"]["answered"] == 1 and report["counts"]["targeted"] == 1


# --- one JSON convention ------------------------------------------------------------------

# Every command that takes --json, and how it is run here ({alpha}: a node's hostname,
# {campaign}: a live query id). A new command must be added (or exempted, with why).
STARTER_RULES = str(REPO_ROOT / "deploy" / "detections" / "starter-rules.yaml")
JSON_COMMANDS: dict[str, list[str]] = {
    "sql": ["sql", "SELECT 1 AS one"],
    "config show": ["config", "show"],
    "config history": ["config", "history"],
    "config export": ["config", "export", "-o", "{tmp}/export"],
    "config apply": ["config", "apply", "-f", "{tmp}/export", "--dry-run"],
    "config rollout status": ["config", "rollout", "status"],
    "secret create": ["secret", "create", "json-check"],
    "secret list": ["secret", "list", "--all"],
    "secret rotate": ["secret", "rotate", "json-check"],
    "secret revoke": ["secret", "revoke", "json-check"],
    "node list": ["node", "list"],
    "node show": ["node", "show", "{alpha}"],
    "node approve": ["node", "approve", "{alpha}"],
    "node revoke": ["node", "revoke", "spare-host"],  # by hostname
    "software list": ["software", "list"],
    "software hosts": ["software", "hosts", "openssl", "--version", "3.0.2"],
    "label list": ["label", "list"],
    "label members": ["label", "members", LABEL],
    "query run": ["query", "run", "SELECT 1", "--node", "{alpha}"],
    "query show": ["query", "show", "{campaign}"],
    "query list": ["query", "list"],
    "query cancel": ["query", "cancel", "{campaign}"],
    "carve list": ["carve", "list"],
    "carve show": ["carve", "show", "{carve}"],
    "carve get": ["carve", "get", "{carve}", "-o", "{tmp}/carve.tar"],
    "token create": ["token", "create", "json-check", "--role", "read-only"],
    "token list": ["token", "list"],
    "token revoke": ["token", "revoke", "json-check"],
    "audit list": ["audit", "list", "--since", "15m"],
    "detection list": ["detection", "list"],
    "detection test": ["detection", "test", "processes-from-tmp", "-f", STARTER_RULES],
    "flags": ["flags"],
    "get": ["get", "secrets"],
    "tls client-cert": ["tls", "client-cert", "json-check", "-o", "{tmp}/certs"],
    # Local files only: in a scratch state directory, in this order.
    "tls internal init": ["--state-dir", "{tmp}/scratch", "tls", "internal", "init"],
    "tls internal issue": ["--state-dir", "{tmp}/scratch", "tls", "internal", "issue", "extra",
                           "-o", "{tmp}/issued"],
    "tls internal show": ["--state-dir", "{tmp}/scratch", "tls", "internal", "show"],
    "curve init": ["--state-dir", "{tmp}/scratch", "curve", "init"],
    "curve add-client": ["--state-dir", "{tmp}/scratch", "curve", "add-client", "gw-extra"],
    "curve list": ["--state-dir", "{tmp}/scratch", "curve", "list"],
}  # fmt: skip
JSON_EXEMPT = {
    "config set": "replaces the live config of the shared cluster",
    "config rollback": "replaces the live config of the shared cluster",
    "config rollout promote": "needs a staged rollout",
    "config rollout abort": "needs a staged rollout",
    "node reject": "needs a pending node",
    "carve start": "waits for an upload (--no-wait covered in the hostname tests)",
    "migrate": "needs the services stopped",
    "curve authorize": "prints what curve add-client does, for a key made elsewhere",
}
# Values as osquery or ClickHouse gave them, not the command's own fields (platform_type
# is osquery's enroll field, a bitmask it sends as text).
DATA_KEYS = {
    "host_details_json", "config_json", "state_json", "row", "rows", "config", "platform_type",
}  # fmt: skip
DIGITS = re.compile(r"-?\d+")


def json_commands() -> set[str]:
    """Every command of the parser that takes --json, by its words ("node list")."""

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                seen: set[int] = set()
                for name, sub in action.choices.items():
                    if id(sub) not in seen:  # aliases ("nodes") are the same parser
                        seen.add(id(sub))
                        yield from walk(sub, [*words, name])
                return
        if any("--json" in action.option_strings for action in parser._actions):
            yield " ".join(words)

    return set(walk(build_parser(), []))


def convention_problems(value: Any, path: str = "") -> list[str]:
    """Numbers written as strings, or times that are not integers, anywhere in `value`."""
    problems = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in DATA_KEYS:
                continue
            where = f"{path}.{key}"
            if key.endswith(("_at", "_ms")) and not isinstance(item, int):
                problems.append(f"{where} = {item!r} is not an integer time")
            problems += convention_problems(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += convention_problems(item, f"{path}[{index}]")
    elif isinstance(value, str) and DIGITS.fullmatch(value):
        problems.append(f"{path} = {value!r} is a number written as a string")
    return problems


def test_every_json_command_is_run_by_the_convention_test() -> None:
    assert set(JSON_COMMANDS) | set(JSON_EXEMPT) == json_commands()
    assert not set(JSON_COMMANDS) & set(JSON_EXEMPT)


def test_every_json_output_keeps_numbers_as_numbers_and_times_as_integers(
    cluster: QuarryCluster, fleet: Fleet, labelled: str, tmp_path: Path
) -> None:
    fleet.add("spare", "linux", "spare-host", loops=False)  # for node revoke
    ran = cluster.cli("query", "run", "SELECT 1", "--node", "alpha-web-1", "--json")
    campaign = live_query_report(ran)["campaign"]["campaign_id"]
    carve = fleet.upload_carve("alpha", b"carved bytes " * 1000)
    values = {"alpha": "alpha-web-1", "campaign": campaign, "tmp": str(tmp_path), "carve": carve}
    problems = {}
    for name, args in JSON_COMMANDS.items():
        result = cluster.cli(*(a.format(**values) for a in args), "--json", check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        documents = [json.loads(line) for line in result.stdout.splitlines()] if (
            name == "query run"
        ) else [json.loads(result.stdout)]  # fmt: skip
        found = [p for document in documents for p in convention_problems(document)]
        if found:
            problems[name] = found
    assert problems == {}


def test_json_times_are_unix_seconds_and_text_times_iso_8601(
    cluster: QuarryCluster, fleet: Fleet
) -> None:
    shown = cluster.cli_json("node", "show", "alpha-web-1")["node"]  # type: ignore[index]
    assert abs(shown["enrolled_at"] - time.time()) < 3600  # type: ignore[index]
    text = cluster.cli("node", "show", "alpha-web-1").stdout
    assert re.search(r"last enrolled:\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
