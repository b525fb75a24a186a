"""The console's pages: login, hosts, a host, live queries, approvals and enroll secrets,
config, labels, carves, detections and alerts, API tokens, the audit log (docs/console.md).

Each page is server-rendered from the API's own handlers; changes are POSTed forms that
redirect (303) to the page showing their outcome. What a role may not do is left out of
the page, and the services refuse it anyway: their refusal is shown as the page's message.
"""

from __future__ import annotations

import difflib
import json
import re
import secrets
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from api_service import access, carves, config, detections, hosts, queries
from api_service.backends import call, sql_rows
from api_service.console.sessions import (
    LOGIN_COOKIE,
    MAX_AGE_S,
    SESSION_COOKIE,
    Session,
    cookie_options,
)
from api_service.console.web import (
    SECURITY_HEADERS,
    STATIC_DIR,
    Console,
    Page,
    form_of,
    redirect,
    render,
)
from api_service.errors import ApiError, bad_request
from api_service.routing import MAX_LIMIT
from osquery_config.targeting import FAMILIES
from protos.v1 import enroll_pb2
from quarry.access.admin_auth import ROLES
from quarry.runtime.clickhouse_sql import sql_string

PAGE_SIZE = 100
HOST_ERRORS_SHOWN = 50
HOST_QUERIES_SHOWN = 20
# osquery's status log severities (glog): 0 info, 1 warning, 2 error, 3 fatal.
SEVERITIES = {0: "info", 1: "warning", 2: "error", 3: "fatal"}


# --- login and logout -----------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a path of this console: never another site (an open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/hosts"
    return target


async def login_form(request: Request, message: str = "", status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        status,
        csrf=nonce,
        next=_safe_next(request.query_params.get("next", "/hosts")),
        message=message,
    )
    response.set_cookie(LOGIN_COOKIE, nonce, **cookie_options(600))
    return response


def login_routes(console: Console) -> list[Route]:
    async def show(request: Request) -> Response:
        if console.session_of(request) is not None:
            return redirect("/hosts")
        return await login_form(request)

    async def submit(request: Request) -> Response:
        form = await form_of(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        presented = form.get("csrf", "")
        if not expected or not secrets.compare_digest(presented.encode(), expected.encode()):
            return await login_form(request, "The login form expired: try again.", 403)
        token = form.get("token", "").strip()
        if not token:
            return await login_form(request, "Paste an API token to log in.", 400)
        try:
            who = await call(console.backends().enroll.WhoAmI, enroll_pb2.WhoAmIRequest(), token)
        except ApiError as error:
            return await login_form(request, f"Not logged in: {error.message}", error.status)
        console.sessions.end(request.cookies.get(SESSION_COOKIE, ""))  # one login, one session
        session = Session(token, who.name, who.role, who.expires_at)
        session_id = console.sessions.start(session)
        response = redirect(_safe_next(form.get("next", "/hosts")))
        # The server ends an idle session (IDLE_S); the cookie lives as long as the longest.
        response.set_cookie(SESSION_COOKIE, session_id, **cookie_options(MAX_AGE_S))
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True)
        return response

    async def logout(request: Request) -> Response:
        session = console.session_of(request)
        form = await form_of(request)
        if session is not None:
            if not session.csrf_ok(form.get("csrf", "")):
                return render(
                    request,
                    "error.html",
                    403,
                    title="Refused",
                    session=session,
                    message="The logout form is missing its CSRF token.",
                )
            console.sessions.end(request.cookies.get(SESSION_COOKIE, ""))
        response = redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True)
        return response

    return [
        Route("/login", show, methods=["GET"]),
        Route("/login", submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


# --- hosts ----------------------------------------------------------------------------

HOST_FILTERS = ("q", "status", "platform", "tag", "label")


async def hosts_page(page: Page) -> Response:
    given = {name: page.request.query_params.get(name, "").strip() for name in HOST_FILTERS}
    offset = page.request.query_params.get("offset", "0")
    found = await page.api(hosts.list_hosts, {**given, "limit": PAGE_SIZE, "offset": offset})
    more = {k: v for k, v in given.items() if v}
    next_link = (
        "/hosts?" + _query({**more, "offset": found["next_offset"]})
        if found["next_offset"] is not None
        else ""
    )
    # htmx asks for the table alone as one types; a history restore wants the whole page.
    headers = page.request.headers
    fragment = headers.get("hx-request") and not headers.get("hx-history-restore-request")
    template = "hosts_table.html" if fragment else "hosts.html"
    return page.render(
        template,
        hosts=found,
        filters=given,
        next_link=next_link,
        statuses=hosts.NODE_STATUSES,
        platforms=FAMILIES,
    )


def _query(values: dict[str, Any]) -> str:
    return "&".join(f"{quote(str(k))}={quote(str(v), safe='')}" for k, v in values.items())


async def host_page(page: Page) -> Response:
    host = await page.api(hosts.show_host, {"host": page.request.path_params["host"]})
    identifier = host["host"]["host_identifier"]
    errors = await sql_rows(
        page.backends,
        "SELECT toString(unix_time), severity, filename, line, message FROM quarry.status_logs"
        f" WHERE host_identifier = {sql_string(identifier)} AND severity >= 1"
        f" ORDER BY unix_time DESC LIMIT {HOST_ERRORS_SHOWN}",
        page.session.token,
    )
    took_part = await sql_rows(
        page.backends,
        "SELECT campaign_id, status, message, row_count, toString(received_at)"
        f" FROM quarry.distributed_status WHERE host_identifier = {sql_string(identifier)}"
        f" ORDER BY received_at DESC LIMIT {HOST_QUERIES_SHOWN}",
        page.session.token,
    )
    return page.render(
        "host.html",
        host=host,
        details=json.dumps(host["host_details"], indent=2, sort_keys=True),
        errors=[
            {
                "at": at,
                "severity": SEVERITIES.get(int(sev), str(sev)),
                "where": f"{f}:{line}",
                "message": message,
            }
            for at, sev, f, line, message in errors
        ],
        queries=[
            {"campaign_id": c, "status": s, "message": m, "row_count": n, "at": at}
            for c, s, m, n, at in took_part
        ],
    )


async def host_change(page: Page, form: dict[str, str]) -> Response:
    host = page.request.path_params["host"]
    action = page.request.path_params["action"]
    handler = {
        "approve": hosts.approve_host,
        "reject": hosts.reject_host,
        "revoke": hosts.revoke_host,
    }.get(action)
    if handler is None:
        raise ApiError(404, "not_found", f"no such action {action!r}")
    changed = await page.api(handler, {"host": host})
    page.flash("ok", f"{changed['hostname'] or changed['host_identifier']}: {changed['status']}")
    return redirect(_safe_next(form.get("next", "")) if form.get("next") else "/approvals")


# --- live queries ---------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text.strip()) if w]


async def _targets(page: Page, form: dict[str, str]) -> dict[str, Any]:
    """The API's targets for the launch form; hosts may be named by hostname too."""
    node_ids = await _node_ids(page, _words(form.get("hosts", "")))
    percent_text = form.get("percent", "").strip()
    try:
        percent = float(percent_text) if percent_text else 0.0
    except ValueError:
        raise bad_request(f"percent must be a number, not {percent_text!r}") from None
    if not 0 <= percent <= 100:
        raise bad_request("percent must be between 0 and 100")
    targets: dict[str, Any] = {
        "hosts": node_ids,
        "tags": _words(form.get("tags", "")),
        "platforms": [p.lower() for p in _words(form.get("platforms", ""))],
        "labels": _words(form.get("labels", "")),
    }
    if percent:
        targets["percent"] = percent
    return targets


async def _node_ids(page: Page, wanted_hosts: list[str]) -> list[str]:
    """The node id of each host named (node id, host identifier or hostname)."""
    if not wanted_hosts:
        return []
    reply = await call(
        page.backends.enroll.ListNodes,
        enroll_pb2.ListNodesRequest(status="active"),
        page.session.token,
    )
    node_ids = []
    for wanted in wanted_hosts:
        match = next(
            (n for n in reply.nodes if wanted in (n.node_id, n.host_identifier, n.hostname)),
            None,
        )
        if match is None:
            raise bad_request(f"no active host {wanted!r} (give a hostname, identifier or node id)")
        node_ids.append(match.node_id)
    return node_ids


async def queries_page(page: Page) -> Response:
    listed = await page.api(queries.list_queries, {"limit": PAGE_SIZE})
    return page.render("queries.html", queries=listed, form={}, platforms=FAMILIES)


async def reach_fragment(page: Page) -> Response:
    """How many hosts the launch form's targets reach, as the distributed service counts
    them (a dry run of the launch); htmx fills it in as one types."""
    form = {
        k: page.request.query_params.get(k, "")
        for k in ("hosts", "tags", "platforms", "labels", "percent")
    }
    try:
        targets = await _targets(page, form)
        reach = await page.api(queries.count_targets, body={"targets": targets})
    except ApiError as error:
        return page.render("reach.html", error=error.message)
    return page.render("reach.html", count=reach["targeted"], estimate=reach["estimate"])


async def start_query(page: Page, form: dict[str, str]) -> Response:
    try:
        targets = await _targets(page, form)
        body = {"sql": form.get("sql", ""), "targets": targets, "author": page.session.name}
        started = await page.api(queries.start_query, body=body)
    except ApiError as error:
        listed = await page.api(queries.list_queries, {"limit": PAGE_SIZE})
        return page.render(
            "queries.html",
            error.status,
            queries=listed,
            form=form,
            error=error.message,
            platforms=FAMILIES,
        )
    return redirect(f"/queries/{started['campaign_id']}")


async def query_page(page: Page) -> Response:
    qid = page.request.path_params["query"]
    status = await page.api(queries.show_query, {"query": qid})
    host_states = await page.api(queries.query_hosts, {"query": qid, "limit": MAX_LIMIT})
    rows = await page.api(queries.query_results, {"query": qid, "limit": MAX_LIMIT})
    columns = list(dict.fromkeys(c for row in rows["items"] for c in row["columns"]))
    return page.render(
        "query.html", query=status, hosts=host_states, rows=rows, columns=columns, qid=qid
    )


async def query_events(page: Page) -> Response:
    """The API's event stream, as this session (a browser's EventSource sends no token)."""
    return await page.api(queries.query_events, {"query": page.request.path_params["query"]})


async def export_rows(page: Page) -> Response:
    """The API's streamed export, as this session (a link cannot send a token)."""
    kind = page.request.path_params["kind"]
    if kind not in queries.EXPORT_FORMATS:
        raise ApiError(404, "not_found", f"no export as {kind!r}: csv or json")
    query = page.request.path_params["query"]
    response = await page.api(queries.export_results, {"query": query, "format": kind})
    return with_security_headers(response)


async def cancel_query(page: Page, form: dict[str, str]) -> Response:
    qid = page.request.path_params["query"]
    await page.api(queries.cancel_query, {"query": qid})
    page.flash("ok", f"live query {qid} cancelled")
    return redirect(f"/queries/{qid}")


# --- approvals and enroll secrets -----------------------------------------------------


async def approvals_page(page: Page) -> Response:
    pending = await page.api(hosts.list_approvals, {"limit": MAX_LIMIT})
    secrets_ = await page.api(access.list_secrets, {"limit": MAX_LIMIT})
    return page.render("approvals.html", pending=pending, secrets=secrets_)


async def create_secret(page: Page, form: dict[str, str]) -> Response:
    body: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "tags": _words(form.get("tags", "")),
        "requires_approval": form.get("requires_approval") == "on",
    }
    if not body["name"]:
        raise bad_request("an enroll secret needs a name")
    created = await page.api(access.create_secret, body=body)
    pending = await page.api(hosts.list_approvals, {"limit": MAX_LIMIT})
    secrets_ = await page.api(access.list_secrets, {"limit": MAX_LIMIT})
    return page.render("approvals.html", pending=pending, secrets=secrets_, created=created)


async def rotate_secret(page: Page, form: dict[str, str]) -> Response:
    """A new value, shown once; the old one keeps working for the grace period asked."""
    hours = form.get("grace_hours", "").strip() or "24"
    if not re.fullmatch(r"\d{1,4}", hours):
        raise bad_request(f"the grace period must be a whole number of hours, not {hours!r}")
    rotated = await page.api(
        access.rotate_secret,
        {"secret": page.request.path_params["secret"]},
        body={"grace_seconds": int(hours) * 3600},
    )
    pending = await page.api(hosts.list_approvals, {"limit": MAX_LIMIT})
    secrets_ = await page.api(access.list_secrets, {"limit": MAX_LIMIT})
    return page.render(
        "approvals.html", pending=pending, secrets=secrets_, created=rotated, rotated=hours
    )


async def revoke_secret(page: Page, form: dict[str, str]) -> Response:
    secret = await page.api(access.revoke_secret, {"secret": page.request.path_params["secret"]})
    page.flash("ok", f"enroll secret {secret['name']} revoked")
    return redirect("/approvals")


# --- config ---------------------------------------------------------------------------


def _pretty(state: Any) -> str:
    return json.dumps(state, indent=2, sort_keys=True)


async def config_page(
    page: Page, draft: str = "", result: dict | None = None, error: str = "", status: int = 200
) -> Response:
    current = await page.api(config.config_state)
    versions = await page.api(config.config_versions, {"limit": 20})
    shown = page.request.query_params.get("diff", "")
    diff = ""
    if shown:
        diff = await _version_diff(page, shown)
    return page.render(
        "config.html",
        status,
        current=current,
        state_text=_pretty(current["live"]["state"]),
        draft=draft or _pretty(current["live"]["state"] or {}),
        versions=versions,
        diff=diff,
        diff_version=shown,
        result=result,
        error=error,
    )


async def _version_diff(page: Page, version: str) -> str:
    newer = await page.api(config.config_version, {"version": version})
    number = newer["version"]
    older_state: Any = {}
    if number > 1:
        older = await page.api(config.config_version, {"version": number - 1})
        older_state = older["state"]
    lines = difflib.unified_diff(
        _pretty(older_state).splitlines(),
        _pretty(newer["state"]).splitlines(),
        f"version {number - 1}",
        f"version {number}",
        lineterm="",
    )
    return "\n".join(lines) or "(no change)"


async def config_show(page: Page) -> Response:
    return await config_page(page)


async def apply_config(page: Page, form: dict[str, str]) -> Response:
    draft = form.get("state", "")
    try:
        state = json.loads(draft)
    except ValueError as exc:
        return await config_page(
            page, draft, error=f"The state is not valid JSON: {exc}", status=400
        )
    if not isinstance(state, dict):
        return await config_page(page, draft, error="The state must be a JSON object.", status=400)
    body = {
        "state": state,
        "dry_run": form.get("dry_run") == "1",
        "comment": form.get("comment", ""),
        "author": page.session.name,
    }
    try:
        result = await page.api(config.apply_config, body=body)
    except ApiError as error:
        return await config_page(page, draft, error=error.message, status=error.status)
    if result["conflicts"]:
        return await config_page(
            page,
            draft,
            result=result,
            status=409,
            error="The state has conflicts: " + "; ".join(result["conflicts"]),
        )
    if not body["dry_run"]:
        page.flash("ok", f"config version {result['version']['version']} is live")
        return redirect("/config")
    return await config_page(page, draft, result=result)


async def rollback_config(page: Page, form: dict[str, str]) -> Response:
    version = page.request.path_params["version"]
    live = await page.api(
        config.rollback_config, {"version": version}, body={"author": page.session.name}
    )
    page.flash("ok", f"version {version}'s state is live again as version {live['version']}")
    return redirect("/config")


async def rollout_change(page: Page, form: dict[str, str]) -> Response:
    action = page.request.path_params["action"]
    handler = {"promote": config.promote_rollout, "abort": config.abort_rollout}.get(action)
    if handler is None:
        raise ApiError(404, "not_found", f"no such rollout action {action!r}: promote or abort")
    live = await page.api(handler, body={"author": page.session.name})
    done = "promoted" if action == "promote" else "aborted"
    page.flash("ok", f"rollout {done}: version {live['version']} is live for every host")
    return redirect("/config")


# --- API tokens -----------------------------------------------------------------------


async def tokens_page(page: Page, created: dict | None = None) -> Response:
    tokens = await page.api(access.list_tokens, {"limit": MAX_LIMIT})
    return page.render("tokens.html", tokens=tokens, created=created, roles=ROLES)


async def tokens_show(page: Page) -> Response:
    return await tokens_page(page)


async def create_token(page: Page, form: dict[str, str]) -> Response:
    body: dict[str, Any] = {"name": form.get("name", "").strip(), "role": form.get("role", "")}
    hours = form.get("expires_in_hours", "").strip()
    if hours:
        if not re.fullmatch(r"\d{1,6}", hours):
            raise bad_request(f"the lifetime must be a whole number of hours, not {hours!r}")
        body["expires_in_seconds"] = int(hours) * 3600
    created = await page.api(access.create_token, body=body)
    return await tokens_page(page, created)


async def revoke_token(page: Page, form: dict[str, str]) -> Response:
    token = await page.api(access.revoke_token, {"token": page.request.path_params["token"]})
    page.flash("ok", f"token {token['name']} revoked")
    return redirect("/tokens")


# --- labels and the audit log ---------------------------------------------------------


async def labels_page(page: Page) -> Response:
    labels = await page.api(hosts.list_labels, {"limit": MAX_LIMIT})
    shown = [
        {"name": label["name"], "definition": _pretty(label["definition"])}
        for label in labels["items"]
    ]
    return page.render("labels.html", labels=shown)


async def audit_page(page: Page) -> Response:
    offset = page.request.query_params.get("offset", "0")
    token = page.request.query_params.get("token", "").strip()
    entries = await page.api(
        access.list_audit, {"limit": PAGE_SIZE, "offset": offset, "token": token}
    )
    next_link = ""
    if entries["next_offset"] is not None:
        next_link = "/audit?" + _query(
            {**({"token": token} if token else {}), "offset": entries["next_offset"]}
        )
    return page.render("audit.html", entries=entries, token=token, next_link=next_link)


async def carves_page(page: Page) -> Response:
    status = page.request.query_params.get("status", "").strip()
    offset = page.request.query_params.get("offset", "0")
    listed = await page.api(
        carves.list_carves, {"status": status, "limit": PAGE_SIZE, "offset": offset}
    )
    next_link = ""
    if listed["next_offset"] is not None:
        next_link = "/carves?" + _query(
            {**({"status": status} if status else {}), "offset": listed["next_offset"]}
        )
    return page.render(
        "carves.html",
        carves=listed,
        wanted_status=status,
        statuses=carves.CARVE_STATUSES,
        next_link=next_link,
    )


# --- detections and alerts -----------------------------------------------------------

ALERT_FILTERS = ("rule", "severity", "state", "host")
TEST_WINDOW = "24h"


async def detections_page(
    page: Page, tried: dict | None = None, error: str = "", status: int = 200
) -> Response:
    listed = await page.api(detections.list_detections, {"limit": MAX_LIMIT})
    return page.render(
        "detections.html",
        status,
        detections=listed,
        tried=tried,
        tried_rule=page.request.path_params.get("rule", ""),
        error=error,
        window=TEST_WINDOW,
    )


async def detections_show(page: Page) -> Response:
    return await detections_page(page)


async def test_detection(page: Page, form: dict[str, str]) -> Response:
    """The rule over the last 24 h, shown on the Detections page (nothing is stored)."""
    rule = {"rule": page.request.path_params["rule"]}
    try:
        tried = await page.api(detections.test_detection, rule, body={"since": TEST_WINDOW})
    except ApiError as error:
        return await detections_page(page, error=error.message, status=error.status)
    return await detections_page(page, tried=tried)


async def alerts_page(page: Page) -> Response:
    given = {name: page.request.query_params.get(name, "").strip() for name in ALERT_FILTERS}
    offset = page.request.query_params.get("offset", "0")
    found = await page.api(detections.list_alerts, {**given, "limit": PAGE_SIZE, "offset": offset})
    next_link = ""
    if found["next_offset"] is not None:
        more = {k: v for k, v in given.items() if v}
        next_link = "/alerts?" + _query({**more, "offset": found["next_offset"]})
    return page.render(
        "alerts.html",
        alerts=found,
        filters=given,
        severities=detections.SEVERITIES,
        states=detections.ALERT_STATES,
        next_link=next_link,
    )


async def alert_page(page: Page) -> Response:
    shown = await page.api(detections.show_alert, {"alert": page.request.path_params["alert"]})
    rows = [row for event in shown["events"] for row in event["rows"]]
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return page.render(
        "alert.html", alert=shown["alert"], events=shown["events"], rows=rows, columns=columns
    )


async def download_carve(page: Page) -> Response:
    """The API's streamed download, as this session (a link cannot send a token)."""
    response = await page.api(carves.download_carve, {"carve": page.request.path_params["carve"]})
    return with_security_headers(response)


def with_security_headers(response: Response) -> Response:
    """The console's headers on an answer the API made, keeping its own (its filename)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def home(request: Request) -> Response:
    return redirect("/hosts")


class ConsoleMount(Mount):
    """The console's pages at every path but the REST API's: /api/ stays the API's, with
    its JSON answers for unknown paths and methods (docs/api.md, "Errors")."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            return Match.NONE, {}
        return super().matches(scope)


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    response = render(
        request, "error.html", 404, title="Not found", message=f"No page {request.url.path}."
    )
    await response(scope, receive, send)


def routes(console: Console) -> list[BaseRoute]:
    """Every console path, as one route after the API's (docs/console.md)."""
    return [ConsoleMount("", app=Router(console_routes(console), default=not_found))]


def console_routes(console: Console) -> list[BaseRoute]:
    get, post = console.page, console.change
    return [
        Route("/", home, methods=["GET"]),
        *login_routes(console),
        Route("/hosts", get(hosts_page), methods=["GET"]),
        Route("/hosts/{host}", get(host_page), methods=["GET"]),
        Route("/hosts/{host}/{action}", post(host_change), methods=["POST"]),
        Route("/queries", get(queries_page), methods=["GET"]),
        Route("/queries", post(start_query), methods=["POST"]),
        Route("/queries/reach", get(reach_fragment), methods=["GET"]),
        Route("/queries/{query}", get(query_page), methods=["GET"]),
        Route("/queries/{query}/events", get(query_events), methods=["GET"]),
        Route("/queries/{query}/rows.{kind}", get(export_rows), methods=["GET"]),
        Route("/queries/{query}/cancel", post(cancel_query), methods=["POST"]),
        Route("/approvals", get(approvals_page), methods=["GET"]),
        Route("/secrets", post(create_secret), methods=["POST"]),
        Route("/secrets/{secret}/revoke", post(revoke_secret), methods=["POST"]),
        Route("/secrets/{secret}/rotate", post(rotate_secret), methods=["POST"]),
        Route("/config", get(config_show), methods=["GET"]),
        Route("/config/apply", post(apply_config), methods=["POST"]),
        Route("/config/versions/{version}/rollback", post(rollback_config), methods=["POST"]),
        Route("/config/rollout/{action}", post(rollout_change), methods=["POST"]),
        Route("/labels", get(labels_page), methods=["GET"]),
        Route("/audit", get(audit_page), methods=["GET"]),
        Route("/carves", get(carves_page), methods=["GET"]),
        Route("/carves/{carve}/download", get(download_carve), methods=["GET"]),
        Route("/detections", get(detections_show), methods=["GET"]),
        Route("/detections/{rule}/test", post(test_detection), methods=["POST"]),
        Route("/alerts", get(alerts_page), methods=["GET"]),
        Route("/alerts/{alert}", get(alert_page), methods=["GET"]),
        Route("/tokens", get(tokens_show), methods=["GET"]),
        Route("/tokens", post(create_token), methods=["POST"]),
        Route("/tokens/{token}/revoke", post(revoke_token), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
