"""The REST API end to end: a real `quarry up` cluster, real HTTPS, emulated osquery nodes.

Every route is called as admin and its answer validated against the OpenAPI document the
API serves; the document is checked against the routes the application really has. A
read-only token is refused every change and an operator token what only admins may do,
each refusal in the audit log; a live query's rows arrive over Server-Sent Events; text a
caller puts in search parameters stays text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from starlette.routing import Route

from api_service.app import OPENAPI_PATH, create_app
from quarry.runtime.settings import PORT_OFFSETS
from tests.emulator import HostProfile, OsqueryNode
from tests.polling import eventually
from tests.quarry_cluster import QuarryCluster, quarry_cluster

FLEET_SIZE = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuarryCluster]:
    with quarry_cluster(tmp_path_factory.mktemp("quarry-api")) as running:
        yield running


class Api:
    """HTTPS client of the cluster's API, verifying its certificate against the local CA."""

    def __init__(self, cluster: QuarryCluster, token: str) -> None:
        port = cluster.port_base + PORT_OFFSETS["api_port"]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = f"https://localhost:{port}"
        self.client = httpx.Client(
            base_url=self.base,
            verify=ssl.create_default_context(cafile=cluster.ca_cert),
            headers=headers,
            timeout=60,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, **kwargs)

    def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        return response.json()


@pytest.fixture(scope="module")
def admin(cluster: QuarryCluster) -> Api:
    return Api(cluster, (cluster.state_dir / "admin_token").read_text().strip())


@pytest.fixture(scope="module")
def document(admin: Api) -> dict:
    return admin.ok("GET", OPENAPI_PATH)


def token_of_role(admin: Api, role: str) -> str:
    name = f"api-test-{role}"
    return admin.ok("POST", "/api/v1/tokens", 201, json={"name": name, "role": role})["value"]


@pytest.fixture(scope="module")
def read_only(cluster: QuarryCluster, admin: Api) -> Api:
    return Api(cluster, token_of_role(admin, "read-only"))


@pytest.fixture(scope="module")
def operator(cluster: QuarryCluster, admin: Api) -> Api:
    return Api(cluster, token_of_role(admin, "operator"))


class Fleet:
    """Emulated nodes running osquery's distributed loop in a thread of their own."""

    def __init__(self, cluster: QuarryCluster, secret: str, count: int, first: int = 0) -> None:
        profiles = [HostProfile.make(first + i, seed=cluster.port_base) for i in range(count)]
        self.nodes = [
            OsqueryNode(
                server=cluster.gateway,
                ca_file=cluster.ca_cert,
                enroll_secret=secret,
                profile=profile,
                # Like --host_identifier=uuid: unique across runs sharing one ClickHouse.
                host_identifier=profile.hardware_uuid.lower(),
                retry_time_scale=0,
            )
            for profile in profiles
        ]
        self._stop = threading.Event()
        self._enrolled = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Fleet:
        self._thread.start()
        assert self._enrolled.wait(60), "the emulated nodes did not enroll"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        for node in self.nodes:
            await node.get_node_key()
        self._enrolled.set()

        async def loop(node: OsqueryNode) -> None:
            while not self._stop.is_set():
                await node.run_distributed_once()
                await asyncio.sleep(0.2)

        try:
            await asyncio.gather(*(loop(node) for node in self.nodes))
        finally:
            for node in self.nodes:
                await node.aclose()


@pytest.fixture(scope="module")
def fleet(cluster: QuarryCluster) -> Iterator[Fleet]:
    with Fleet(cluster, cluster.enroll_secret, FLEET_SIZE) as running:
        yield running


CARVED = b"quarry carve test\n" * 1500  # 27 KB: four of the emulator's 8 KiB blocks


def silent_node(cluster: QuarryCluster, number: int) -> OsqueryNode:
    """An emulated host outside the fleet's loop: it answers no live query."""
    profile = HostProfile.make(100 + number, seed=cluster.port_base)
    return OsqueryNode(
        server=cluster.gateway,
        ca_file=cluster.ca_cert,
        enroll_secret=cluster.enroll_secret,
        profile=profile,
        host_identifier=profile.hardware_uuid.lower(),
        retry_time_scale=0,
    )


def carve_from_a_new_host(admin: Api, cluster: QuarryCluster, number: int, data: bytes) -> str:
    """A fresh emulated host uploads data as a carve through the gateway; its session id.
    The host is revoked after: it answers no live query, and `all` must stay the fleet."""
    node = silent_node(cluster, number)

    async def run() -> str:
        try:
            result = await node.carve(data)
        finally:
            await node.aclose()
        assert result.ok, node.last_error
        return result.session_id

    session = asyncio.run(run())
    admin.ok("POST", f"/api/v1/hosts/{node.host_identifier}/revoke")
    return session


def documented_operations(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def documented_content(document: dict, method: str, path: str, status: int = 200) -> dict:
    """The media types the document gives for this operation's answer, with their schemas."""
    return document["paths"][path][method.lower()]["responses"][str(status)]["content"]


def validate(
    document: dict, method: str, path: str, status: int, body: Any, media: str = ""
) -> None:
    """body against the schema the document gives for this operation, status and media
    type (by default the first it lists)."""
    content = documented_content(document, method, path, status)
    schema = content[media]["schema"] if media else next(iter(content.values()))["schema"]
    jsonschema.validate(body, {**schema, "components": document["components"]})


def media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


class Recorder:
    """Calls operations by their documented path, validating each answer, noting coverage."""

    def __init__(self, api: Api, document: dict) -> None:
        self.api = api
        self.document = document
        self.covered: set[tuple[str, str]] = set()

    def __call__(self, method: str, template: str, status: int = 200, **kwargs: Any) -> Any:
        path = template.format(**kwargs.pop("path", {}))
        body = self.api.ok(method, path, status, **kwargs)
        validate(self.document, method, template, status, body)
        self.covered.add((method, template))
        return body


# --- the document and the routes ------------------------------------------------------


def test_openapi_documents_exactly_the_routes_the_app_has(document: dict) -> None:
    served = {
        (method, route.path)
        for route in create_app().routes
        if isinstance(route, Route) and route.path != OPENAPI_PATH
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert served == documented_operations(document)
    for path, item in document["paths"].items():
        for operation in item.values():
            in_path = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert in_path == set(path.replace("}", "{").split("{")[1::2]), path
    jsonschema.Draft202012Validator.check_schema({"$defs": document["components"]["schemas"]})


# --- every route as admin -------------------------------------------------------------


def test_every_route_works_as_admin(
    cluster: QuarryCluster, admin: Api, document: dict, fleet: Fleet
) -> None:
    call = Recorder(admin, document)
    hosts = eventually(
        lambda: (
            call("GET", "/api/v1/hosts", params={"limit": 1000})["total"] >= FLEET_SIZE
            and call("GET", "/api/v1/hosts", params={"limit": 1000})
        )
    )
    assert hosts, "the fleet's hosts are not listed"
    node = fleet.nodes[0]
    one = call("GET", "/api/v1/hosts", params={"q": node.host_identifier.upper()})
    assert [h["host_identifier"] for h in one["items"]] == [node.host_identifier]
    assert all("node_key" not in h for h in hosts["items"])
    host = call("GET", "/api/v1/hosts/{host}", path={"host": node.host_identifier})
    assert host["host"]["host_identifier"] == node.host_identifier
    assert host["config"]["blocks"] and host["last_seen_at"]

    # Labels, config: a label every linux host is in, applied as admin.
    state = call("GET", "/api/v1/config")["live"]["state"]
    state["labels"] = {"all-linux": {"query": "SELECT 1", "interval": 60}}
    dry = call("POST", "/api/v1/config/apply", json={"state": state, "dry_run": True})
    assert dry["changed"]
    applied = call("POST", "/api/v1/config/apply", json={"state": state, "comment": "api test"})
    versions = call("GET", "/api/v1/config/versions")
    assert versions["items"][0]["version"] == applied["version"]["version"]
    call(
        "GET", "/api/v1/config/versions/{version}", path={"version": applied["version"]["version"]}
    )
    # A staged rollout aborted, another promoted, then the first version rolled back to.
    for interval, action in ((61, "abort"), (62, "promote")):
        state["labels"]["all-linux"]["interval"] = interval
        staged = call("POST", "/api/v1/config/apply", json={"state": state, "canary_percent": 50})
        assert call("GET", "/api/v1/config")["rollout"]["rollout"]["candidate_version"]
        finished = call("POST", f"/api/v1/config/rollout/{action}", json={"author": "api test"})
        assert not call("GET", "/api/v1/config")["rollout"]["rollout"]["candidate_version"]
        assert (finished["version"] == staged["version"]["version"]) == (action == "promote")
    back = call(
        "POST",
        "/api/v1/config/versions/{version}/rollback",
        path={"version": applied["version"]["version"]},
        json={},
    )
    assert back["state"] == applied["version"]["state"] and back["version"] > finished["version"]
    labels = call("GET", "/api/v1/labels")
    assert [label["name"] for label in labels["items"]] == ["all-linux"]
    members = eventually(
        lambda: (
            (got := call("GET", "/api/v1/labels/{label}/hosts", path={"label": "all-linux"}))[
                "total"
            ]
            == FLEET_SIZE
            and got
        )
    )
    assert {h["host_identifier"] for h in members["items"]} == {
        n.host_identifier for n in fleet.nodes
    }
    in_label = call(
        "GET", "/api/v1/hosts", params={"label": "all-linux", "q": node.profile.hostname}
    )
    assert [h["host_identifier"] for h in in_label["items"]] == [node.host_identifier]

    # Live queries: first how many hosts targets reach (nothing is started), then one.
    before = call("GET", "/api/v1/queries")["total"]
    reach = call("POST", "/api/v1/queries/dry-run", json={"targets": {"all": True}})
    assert reach == {"targeted": FLEET_SIZE, "open_targeting": True, "estimate": False}
    one_host = {"hosts": [host["host"]["node_id"]], "platforms": ["linux"]}
    reach = call("POST", "/api/v1/queries/dry-run", json={"sql": "SELECT 1", "targets": one_host})
    assert reach == {"targeted": 1, "open_targeting": False, "estimate": False}
    nobody = call("POST", "/api/v1/queries/dry-run", json={"targets": {"tags": ["no-such-tag"]}})
    assert nobody["targeted"] == 0
    assert call("GET", "/api/v1/queries")["total"] == before
    started = call(
        "POST",
        "/api/v1/queries",
        201,
        json={"sql": "SELECT name, version FROM os_version", "targets": {"all": True}},
    )
    qid = started["campaign_id"]
    done = eventually(
        lambda: (s := call("GET", "/api/v1/queries/{query}", path={"query": qid}))["done"] and s
    )
    assert done and done["counts"]["answered"] == FLEET_SIZE
    answered = call(
        "GET", "/api/v1/queries/{query}/hosts", path={"query": qid}, params={"state": "answered"}
    )
    assert answered["total"] == FLEET_SIZE
    rows = call("GET", "/api/v1/queries/{query}/results", path={"query": qid})
    assert len(rows["items"]) == FLEET_SIZE and rows["next_cursor"] is None
    assert set(rows["items"][0]["columns"]) == {"name", "version"}
    assert qid in {q["campaign_id"] for q in call("GET", "/api/v1/queries")["items"]}
    response = admin.request("GET", f"/api/v1/queries/{qid}/events")
    assert response.status_code == 200 and "event: done" in response.text
    call.covered.add(("GET", "/api/v1/queries/{query}/events"))
    # The export: each format's media type is one the document lists, with its schema.
    export = "/api/v1/queries/{query}/export"
    exported = {
        kind: admin.request("GET", export.format(query=qid), params={"format": kind})
        for kind in ("csv", "json")
    }
    assert [media_type(r) for r in exported.values()] == ["text/csv", "application/json"]
    assert set(documented_content(document, "GET", export)) == {"text/csv", "application/json"}
    lines = exported["csv"].text.splitlines()
    assert lines[0] == "host_identifier,row_index,name,version" and len(lines) == 1 + FLEET_SIZE
    validate(document, "GET", export, 200, exported["csv"].text, "text/csv")
    assert exported["json"].json() == rows["items"]
    validate(document, "GET", export, 200, exported["json"].json(), "application/json")
    call.covered.add(("GET", export))
    call("POST", "/api/v1/queries/{query}/cancel", path={"query": qid})

    # Enroll secrets, approvals.
    created = call(
        "POST", "/api/v1/secrets", 201, json={"name": "api-approval", "requires_approval": True}
    )
    assert created["value"] and created["requires_approval"]
    assert "api-approval" in {s["name"] for s in call("GET", "/api/v1/secrets")["items"]}
    with Fleet(cluster, created["value"], 2, first=FLEET_SIZE) as pending:
        waiting = eventually(lambda: call("GET", "/api/v1/approvals")["total"] == 2)
        assert waiting
        first, second = (n.host_identifier for n in pending.nodes)
        approved = call("POST", "/api/v1/hosts/{host}/approve", path={"host": first})
        assert approved["status"] == "active"
        rejected = call("POST", "/api/v1/hosts/{host}/reject", path={"host": second})
        assert rejected["status"] == "revoked"
    revoked = call("POST", "/api/v1/hosts/{host}/revoke", path={"host": first})
    assert revoked["status"] == "revoked"
    rotated = call(
        "POST",
        "/api/v1/secrets/{secret}/rotate",
        path={"secret": "api-approval"},
        json={"grace_seconds": 60},
    )
    assert rotated["value"] and rotated["value"] != created["value"]
    call("POST", "/api/v1/secrets/{secret}/revoke", path={"secret": "api-approval"})

    # Carves: listed, shown, downloaded whole (the download is bytes: not validated as JSON).
    session = carve_from_a_new_host(admin, cluster, 1, CARVED)
    listed = eventually(
        lambda: (
            (got := call("GET", "/api/v1/carves", params={"status": "complete"}))["total"] and got
        )
    )
    assert [c["session_id"] for c in listed["items"]] == [session]
    carve = call("GET", "/api/v1/carves/{carve}", path={"carve": listed["items"][0]["carve_id"]})
    assert carve["session_id"] == session and carve["carve_size"] == len(CARVED)
    assert carve["sha256"] == hashlib.sha256(CARVED).hexdigest() and carve["completed_at"]
    response = admin.request("GET", f"/api/v1/carves/{session}/download")
    assert response.status_code == 200 and response.content == CARVED
    assert response.headers["x-carve-sha256"] == carve["sha256"]
    assert response.headers["content-type"] == "application/octet-stream"
    assert list(documented_content(document, "GET", "/api/v1/carves/{carve}/download")) == [
        "application/octet-stream"
    ]
    assert response.headers["content-disposition"].endswith('.tar"')
    call.covered.add(("GET", "/api/v1/carves/{carve}/download"))

    assert call("GET", "/api/v1/health")["status"] == "ok"

    # Tokens and the audit log.
    token = call("POST", "/api/v1/tokens", 201, json={"name": "api-short", "role": "read-only"})
    assert token["value"]
    assert "api-short" in {t["name"] for t in call("GET", "/api/v1/tokens")["items"]}
    call("POST", "/api/v1/tokens/{token}/revoke", path={"token": "api-short"})
    audit = call("GET", "/api/v1/audit", params={"limit": 5})
    assert len(audit["items"]) == 5 and audit["next_offset"] == 5
    times = [entry["at"] for entry in audit["items"]]
    assert times == sorted(times, reverse=True)

    # Detections: no rule is live on this cluster (tests/test_api_detections.py has one);
    # a rule given whole is tried, and an alert that is not there is a 404.
    assert call("GET", "/api/v1/detections")["items"] == []
    tried = call("POST", "/api/v1/detections/{rule}/test", path={"rule": "given"}, json=TRIED)
    assert tried["alerts"] == [] and tried["rule"] == "given"
    assert call("GET", "/api/v1/alerts", params={"host": "none"})["items"] == []
    call("GET", "/api/v1/alerts/{alert}", 404, path={"alert": "none"})

    assert call.covered == documented_operations(document)


# --- roles: the services decide, the API adds and removes nothing ---------------------

# A rule given whole to the test route (no host logs a process from here).
TRIED = {
    "since": "1h",
    "rule": {
        "sql": "SELECT host_identifier, batch_id FROM quarry.results WHERE {arrived}"
        " AND query = 'processes' AND like(column_values[1], '/nowhere/%')"
    },
}
# Every change the API offers, with arguments that would work for an admin.
WRITES = [
    ("POST", "/api/v1/hosts/{host}/approve", {}),
    ("POST", "/api/v1/hosts/{host}/reject", {}),
    ("POST", "/api/v1/hosts/{host}/revoke", {}),
    ("POST", "/api/v1/secrets", {"json": {"name": "refused"}}),
    ("POST", "/api/v1/secrets/{secret}/revoke", {}),
    ("POST", "/api/v1/secrets/{secret}/rotate", {}),
    ("POST", "/api/v1/tokens", {"json": {"name": "refused", "role": "admin"}}),
    ("POST", "/api/v1/tokens/{token}/revoke", {}),
    ("POST", "/api/v1/config/apply", {"json": {"state": {}, "dry_run": True}}),
    ("POST", "/api/v1/config/versions/{version}/rollback", {"json": {}}),
    ("POST", "/api/v1/config/rollout/promote", {"json": {}}),
    ("POST", "/api/v1/config/rollout/abort", {"json": {}}),
    ("POST", "/api/v1/queries", {"json": {"sql": "SELECT 1"}}),
    ("POST", "/api/v1/queries/dry-run", {"json": {}}),
    ("POST", "/api/v1/queries/{query}/cancel", {}),
    ("POST", "/api/v1/detections/{rule}/test", {"json": TRIED}),
]
OPERATOR_MAY = {
    "/api/v1/queries",
    "/api/v1/queries/dry-run",
    "/api/v1/queries/{query}/cancel",
    "/api/v1/detections/{rule}/test",
}
ADMIN_ONLY_READS = ["/api/v1/tokens", "/api/v1/audit"]


def write_calls(fleet: Fleet, admin: Api) -> list[tuple[str, str, str, dict]]:
    """(method, template, path, kwargs) of each change, its path filled in."""
    query = admin.ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT 1"})["campaign_id"]
    values = {
        "host": fleet.nodes[1].host_identifier,
        "query": query,
        "secret": "default",
        "token": "root",
        "version": 1,
        "rule": "given",
    }
    return [(m, t, t.format(**values), kwargs) for m, t, kwargs in WRITES]


def test_every_write_route_is_in_the_refusal_tests(document: dict) -> None:
    documented = {(m, p) for (m, p) in documented_operations(document) if m != "GET"}
    assert {(m, t) for m, t, _ in WRITES} == documented


def audited_refusals(admin: Api, token_name: str) -> list[dict]:
    entries = admin.ok("GET", "/api/v1/audit", params={"token": token_name, "limit": 1000})
    return [e for e in entries["items"] if e["outcome"] == "PERMISSION_DENIED"]


def test_a_read_only_token_is_refused_every_change_and_each_refusal_is_audited(
    admin: Api, read_only: Api, fleet: Fleet
) -> None:
    for method, _, path, kwargs in write_calls(fleet, admin):
        response = read_only.request(method, path, **kwargs)
        assert response.status_code == 403, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "permission_denied" and "read-only" in error["message"]
    for path in ADMIN_ONLY_READS:
        assert read_only.request("GET", path).status_code == 403
    # Reads are allowed: the API refuses nothing the services allow.
    assert read_only.request("GET", "/api/v1/hosts").status_code == 200
    assert read_only.request("GET", "/api/v1/config").status_code == 200
    expected = len(WRITES) + len(ADMIN_ONLY_READS)
    refused = eventually(
        lambda: len(r := audited_refusals(admin, "api-test-read-only")) >= expected and r
    )
    assert refused, audited_refusals(admin, "api-test-read-only")
    methods = {entry["method"].rsplit("/", 1)[1] for entry in refused}
    assert {
        "ApproveNode",
        "RejectNode",
        "RevokeNode",
        "CreateSecret",
        "RevokeSecret",
        "RotateSecret",
        "CreateToken",
        "RevokeToken",
        "ApplyState",
        "Rollback",
        "PromoteRollout",
        "AbortRollout",
        "StartQuery",
        "CancelCampaign",
        "TestDetection",
        "ListTokens",
        "ListAudit",
    } <= methods


def test_an_operator_runs_live_queries_but_is_refused_admin_changes(
    admin: Api, operator: Api, fleet: Fleet
) -> None:
    for method, template, path, kwargs in write_calls(fleet, admin):
        response = operator.request(method, path, **kwargs)
        if template in OPERATOR_MAY:
            assert response.status_code in (200, 201), (path, response.text)
        else:
            assert response.status_code == 403, (path, response.text)
    for path in ADMIN_ONLY_READS:
        assert operator.request("GET", path).status_code == 403
    refused = eventually(
        lambda: (
            len(r := audited_refusals(admin, "api-test-operator"))
            >= len(WRITES) - len(OPERATOR_MAY) + len(ADMIN_ONLY_READS)
            and r
        )
    )
    assert refused, audited_refusals(admin, "api-test-operator")


def test_no_token_or_an_unknown_one_is_unauthenticated(cluster: QuarryCluster) -> None:
    for token in ("", "qt_not-a-real-token"):
        response = Api(cluster, token).request("GET", "/api/v1/hosts")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"


# --- live query rows: SSE and paging --------------------------------------------------


def sse_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_server_sent_events_deliver_the_rows_emulated_nodes_answer(
    operator: Api, read_only: Api, fleet: Fleet
) -> None:
    started = operator.ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT * FROM users"})
    qid = started["campaign_id"]
    events: list[tuple[str, Any]] = []
    with read_only.client.stream("GET", f"/api/v1/queries/{qid}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = ""
        for chunk in response.iter_text():
            text += chunk
            if "event: done" in text:
                break
        events = sse_events(text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "done"
    rows = [row for kind, data in events if kind == "rows" for row in data["rows"]]
    by_host = {row["host_identifier"] for row in rows}
    assert by_host == {node.host_identifier for node in fleet.nodes}
    assert all(row["columns"]["username"] for row in rows)
    assert events[-1][1]["counts"]["answered"] == FLEET_SIZE
    # The same rows, a page of one at a time, by cursor.
    paged, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        got = read_only.ok("GET", f"/api/v1/queries/{qid}/results", params=params)
        paged += got["items"]
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert sorted(map(json.dumps, paged)) == sorted(map(json.dumps, rows))


def test_carve_bytes_are_for_operators_and_a_refusal_is_audited(
    cluster: QuarryCluster, admin: Api, read_only: Api, operator: Api
) -> None:
    session = carve_from_a_new_host(admin, cluster, 2, CARVED[::-1])
    # Listing and metadata are reads; the bytes of a carved file need operator.
    shown = eventually(
        lambda: (
            (got := read_only.request("GET", f"/api/v1/carves/{session}")).status_code == 200
            and got.json()["status"] == "complete"
        )
    )
    assert shown
    assert session in {c["session_id"] for c in read_only.ok("GET", "/api/v1/carves")["items"]}
    refused = read_only.request("GET", f"/api/v1/carves/{session}/download")
    assert refused.status_code == 403, refused.text
    assert "DownloadCarve" in refused.json()["error"]["message"]
    with operator.client.stream("GET", f"/api/v1/carves/{session}/download") as response:
        assert response.status_code == 200
        assert b"".join(response.iter_bytes()) == CARVED[::-1]
    entries = eventually(
        lambda: [
            e
            for e in audited_refusals(admin, "api-test-read-only")
            if e["method"].endswith("/DownloadCarve")
        ]
    )
    assert entries and session[:8] in entries[0]["summary"]
    # Unknown carves and carves not complete are clear JSON errors.
    missing = operator.request("GET", "/api/v1/carves/nothing-here/download")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert operator.request("GET", "/api/v1/carves", params={"status": "lost"}).status_code == 400


def metric_samples(cluster: QuarryCluster, service: str, name: str) -> dict[str, float]:
    """The samples of one metric a process serves, by their label text."""
    port = cluster.settings.metrics_port(service)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            samples[labels[len(name) :]] = float(value)
    return samples


def test_the_api_counts_requests_by_route_template_and_answers_health(
    cluster: QuarryCluster, read_only: Api, fleet: Fleet
) -> None:
    secret_host = "host-that-must-not-become-a-label"
    assert read_only.request("GET", f"/api/v1/hosts/{secret_host}").status_code == 404
    assert read_only.request("GET", "/api/v1/hosts").status_code == 200
    assert read_only.request("GET", "/api/v1/no/such/route").status_code == 404
    requests = metric_samples(cluster, "api", "quarry_api_requests_total")
    assert requests['{method="GET",route="/api/v1/hosts/{host}",status="404"}'] >= 1
    assert requests['{method="GET",route="/api/v1/hosts",status="200"}'] >= 1
    assert requests['{method="GET",route="unmatched",status="404"}'] >= 1
    assert not any(secret_host in labels for labels in requests)
    latency = metric_samples(cluster, "api", "quarry_api_request_duration_seconds_count")
    assert latency['{method="GET",route="/api/v1/hosts"}'] >= 1
    port = cluster.settings.metrics_port("api")
    for path in ("/healthz", "/readyz"):
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200
    # The health route needs no token and names each service it reached.
    health = Api(cluster, "").request("GET", "/api/v1/health")
    assert health.status_code == 200, health.text
    assert health.json() == {
        "status": "ok",
        "services": dict.fromkeys(("enroll", "config", "distributed", "ingest"), "serving"),
    }


def test_an_event_stream_the_client_leaves_is_freed_with_its_service_stream(
    cluster: QuarryCluster, operator: Api, read_only: Api, fleet: Fleet
) -> None:
    # A host that enrolled and never reads queries: the campaign stays open for its TTL.
    node = silent_node(cluster, 3)

    async def enroll() -> None:
        await node.get_node_key()
        await node.aclose()

    asyncio.run(enroll())
    node_id = operator.ok("GET", f"/api/v1/hosts/{node.host_identifier}")["host"]["node_id"]
    started = operator.ok(
        "POST",
        "/api/v1/queries",
        201,
        json={"sql": "SELECT 1", "targets": {"hosts": [node_id]}, "ttl_seconds": 600},
    )
    watch = '{method="/quarry.v1.DistributedService/WatchCampaign"}'

    def open_streams() -> tuple[float, float]:
        api = metric_samples(cluster, "api", "quarry_api_streams_open")['{kind="events"}']
        service = metric_samples(cluster, "distributed", "quarry_grpc_server_calls_in_flight")
        return api, service.get(watch, 0.0)

    assert eventually(lambda: open_streams() == (0.0, 0.0)), open_streams()
    client = httpx.Client(
        base_url=read_only.base,
        verify=ssl.create_default_context(cafile=cluster.ca_cert),
        headers=read_only.client.headers,
        timeout=60,
    )
    with client.stream("GET", f"/api/v1/queries/{started['campaign_id']}/events") as response:
        assert response.status_code == 200
        chunks = response.iter_text()  # held: a dropped iterator closes the response
        first = ""
        while "\n\n" not in first:
            first += next(chunks)
        assert first.startswith("event: progress")
        assert eventually(lambda: open_streams() == (1.0, 1.0)), open_streams()
    client.close()  # the connection is gone, mid-stream
    assert eventually(lambda: open_streams() == (0.0, 0.0)), open_streams()
    assert not operator.ok("GET", f"/api/v1/queries/{started['campaign_id']}")["done"]
    Api(cluster, (cluster.state_dir / "admin_token").read_text().strip()).ok(
        "POST", f"/api/v1/hosts/{node.host_identifier}/revoke"
    )


def test_events_of_an_unknown_query_are_a_json_404(read_only: Api) -> None:
    response = read_only.request("GET", "/api/v1/queries/q_nothing/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- hostile or mistaken requests -----------------------------------------------------

INJECTIONS = [
    "' OR 1=1 --",
    "x') UNION SELECT name FROM system.tables --",
    "\\' OR ''='",
    "%' OR '%'='",
    "*",
    "; DROP TABLE quarry.distributed_results",
]


def test_injection_attempts_in_search_parameters_are_inert(admin: Api, fleet: Fleet) -> None:
    qid = admin.ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT 1"})["campaign_id"]
    for text in INJECTIONS:
        hosts = admin.ok("GET", "/api/v1/hosts", params={"q": text})
        assert hosts["total"] == 0, text
        rows = admin.ok("GET", f"/api/v1/queries/{qid}/results", params={"host": text})
        assert rows["items"] == [], text
        for param in ("tag", "platform", "label"):
            assert admin.ok("GET", "/api/v1/hosts", params={param: text})["total"] == 0
        response = admin.request("GET", f"/api/v1/hosts/{quote(text, safe='')}")
        assert response.status_code == 404, (text, response.text)
    # The table is still there and still answers.
    assert admin.request("GET", f"/api/v1/queries/{qid}/results").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "/api/v1/hosts", {"params": {"limit": 1001}}, 400, "limit_too_large"),
        ("GET", "/api/v1/hosts", {"params": {"limit": "ten"}}, 400, "bad_request"),
        ("GET", "/api/v1/hosts", {"params": {"offset": -1}}, 400, "bad_request"),
        ("GET", "/api/v1/hosts", {"params": {"sort": "name"}}, 400, "bad_request"),
        ("GET", "/api/v1/hosts", {"params": {"status": "gone"}}, 400, "bad_request"),
        ("GET", "/api/v1/audit", {"params": {"since": "yesterday"}}, 400, "bad_request"),
        ("POST", "/api/v1/queries", {"content": b"{not json"}, 400, "invalid_json"),
        ("POST", "/api/v1/queries", {"json": {"query": "SELECT 1"}}, 400, "bad_request"),
        ("POST", "/api/v1/queries", {"json": ["SELECT 1"]}, 400, "bad_request"),
        ("POST", "/api/v1/queries", {"json": {"sql": ""}}, 400, "invalid_argument"),
        ("GET", "/api/v1/queries/q_x/results", {"params": {"cursor": "%%"}}, 404, "not_found"),
        ("GET", "/api/v1/hosts/no-such-host", {}, 404, "not_found"),
        ("GET", "/api/v1/nothing", {}, 404, "not_found"),
        ("DELETE", "/api/v1/hosts", {}, 405, "method_not_allowed"),
    ],
)
def test_mistakes_are_answered_as_one_json_line(
    admin: Api, document: dict, method: str, path: str, kwargs: dict, status: int, code: str
) -> None:
    response = admin.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    jsonschema.validate(body, document["components"]["schemas"]["Error"])
    assert body["error"]["code"] == code
    assert "\n" not in body["error"]["message"] and "Traceback" not in response.text


def test_a_bad_cursor_is_a_clear_400(admin: Api, fleet: Fleet) -> None:
    qid = admin.ok("POST", "/api/v1/queries", 201, json={"sql": "SELECT 1"})["campaign_id"]
    response = admin.request("GET", f"/api/v1/queries/{qid}/results", params={"cursor": "%%"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_cursor"


def test_the_api_serves_https_only(cluster: QuarryCluster) -> None:
    port = cluster.port_base + PORT_OFFSETS["api_port"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://localhost:{port}/api/v1/hosts", timeout=5)


def test_a_refused_precondition_is_a_409_with_the_services_reason(admin: Api, fleet: Fleet) -> None:
    active = fleet.nodes[2].host_identifier
    response = admin.request("POST", f"/api/v1/hosts/{active}/reject")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "failed_precondition" and "not pending" in error["message"]
