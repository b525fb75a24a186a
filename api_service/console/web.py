"""The console's plumbing: templates, the logged-in session of a request, CSRF checks,
security headers, and calling the API's own handlers with the session's token.

Every page calls the same handlers the REST API serves (api_service/hosts.py, ...), with
the parameters checked by the same declarations (api_service/routing.py), so the console
can do nothing the API cannot, and the services decide and audit every call
(docs/adr/0014-rest-api-over-grpc.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api_service import access, carves, config, detections, hosts, queries
from api_service.backends import Backends
from api_service.console.sessions import SESSION_COOKIE, Session, SessionStore
from api_service.errors import ApiError, bad_request
from api_service.json_messages import iso_time
from api_service.routing import Call, Endpoint, check_body
from quarry.access.admin_auth import role_allows

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
HTMX_FILE = "htmx-2.0.11.min.js"
MAX_FORM_BYTES = 4 << 20  # a config state pasted in the apply form is the largest

# No inline script or style anywhere: scripts and styles come from /static only.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Vary": "HX-Request",  # a page and its htmx fragment share a URL
}

ENDPOINTS: dict[Callable[..., Any], Endpoint] = {
    e.handler: e
    for module in (hosts, queries, config, access, carves, detections)
    for e in module.ENDPOINTS
}


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
    )
    env.globals["htmx_file"] = HTMX_FILE
    env.filters["when"] = lambda value: value or "never"
    env.filters["unix_time"] = lambda value: iso_time(value) or "never"
    return env


TEMPLATES = _environment()


@dataclass
class Page:
    """One console request: the session it belongs to and the services behind it."""

    request: Request
    session: Session
    backends: Backends

    def can(self, role: str) -> bool:
        return role_allows(self.session.role, role)

    async def api(
        self, handler: Callable[..., Any], params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """handler as the REST API would run it for this session's token: parameters
        checked and defaulted by its declaration, the body by its schema."""
        endpoint = ENDPOINTS[handler]
        given = params or {}
        values: dict[str, Any] = {}
        for param in endpoint.all_params:
            raw = given.get(param.name)
            if raw is None or raw == "":
                values[param.name] = param.default
            else:
                values[param.name] = param.parse(str(raw)) if isinstance(raw, str | int) else raw
        if endpoint.body is not None:
            check_body(body or {}, endpoint.body)
        call = Call(self.request, self.session.token, values, body or {}, self.backends)
        return await endpoint.handler(call)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self.request, template, status, page=self, session=self.session, **context)

    def flash(self, kind: str, message: str) -> None:
        self.session.flashes.append((kind, message))


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = context.get("session")
    flashes = list(session.flashes) if session else []
    if session:
        session.flashes.clear()
    html = TEMPLATES.get_template(template).render(request=request, flashes=flashes, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=SECURITY_HEADERS)


def login_redirect(request: Request) -> RedirectResponse:
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"/login?next={quote(wanted, safe='')}")


async def form_of(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, each field given once."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise ApiError(413, "body_too_large", f"the form is over {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise bad_request("the form is not UTF-8 text") from None
    return {name: values[-1] for name, values in fields.items()}


PageHandler = Callable[[Page], Awaitable[Response]]
FormHandler = Callable[[Page, dict[str, str]], Awaitable[Response]]


class Console:
    """The console's sessions and how each kind of request reaches its handler."""

    def __init__(self, backends: Callable[[], Backends]) -> None:
        self.sessions = SessionStore()
        self.backends = backends

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))

    def page(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        """A GET page: logged in, or sent to the login form."""

        async def endpoint(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                return login_redirect(request)
            page = Page(request, session, self.backends())
            try:
                return await handler(page)
            except ApiError as error:
                return error_page(page, error)
            except Exception:
                return failure_page(page)

        return endpoint

    def change(self, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        """A POST of a form: logged in and carrying the session's CSRF token, or refused."""

        async def endpoint(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                return render(
                    request,
                    "error.html",
                    401,
                    title="Not logged in",
                    message="Log in again: the session has ended.",
                )
            page = Page(request, session, self.backends())
            try:
                form = await form_of(request)
                presented = form.pop("csrf", "") or request.headers.get("x-csrf-token", "")
                if not session.csrf_ok(presented):
                    return page.render(
                        "error.html",
                        403,
                        title="Refused",
                        message="The form is missing its CSRF token or it is not this "
                        "session's: reload the page and try again.",
                    )
                return await handler(page, form)
            except ApiError as error:
                return error_page(page, error)
            except Exception:
                return failure_page(page)

        return endpoint


def error_page(page: Page, error: ApiError) -> HTMLResponse:
    titles = {401: "Not logged in", 403: "Not allowed", 404: "Not found"}
    return page.render(
        "error.html",
        error.status,
        title=titles.get(error.status, "The request failed"),
        message=error.message,
        code=error.code,
    )


def failure_page(page: Page) -> HTMLResponse:
    """A bug: logged with its traceback, shown as one line (as the API's JSON answer)."""
    log.exception("%s %s failed", page.request.method, page.request.url.path)
    return page.render(
        "error.html",
        500,
        title="The page failed",
        message="The console failed to answer; the error is in the API process's log.",
    )
