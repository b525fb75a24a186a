"""Console sessions: server-side, in the API process's memory, one per login.

The browser holds only a random session id in a `__Host-` cookie (HttpOnly, Secure,
SameSite=Strict, Path=/): the admin token it logged in with stays here and is never sent
back to the browser. Each session has its own CSRF token, put in every form and checked on
every change (docs/console.md). A session ends at logout, after IDLE_S without a request,
after MAX_AGE_S in all, or when its token expires; restarting the process ends them all,
and several API replicas need sticky sessions at the load balancer.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from quarry.access.admin_auth import is_expired

SESSION_COOKIE = "__Host-quarry_session"
LOGIN_COOKIE = "__Host-quarry_login"  # the login form's own CSRF value (double submit)
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """Who is logged in: their token (kept here only), its name and role, a CSRF token."""

    token: str
    name: str
    role: str
    token_expires_at: int
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    started: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    # Messages for the next page shown (after a change redirects): (kind, text).
    flashes: list[tuple[str, str]] = field(default_factory=list)

    def live(self, now: float) -> bool:
        return (
            now - self.last_used < IDLE_S
            and now - self.started < MAX_AGE_S
            and not is_expired(self.token_expires_at, now)
        )

    def csrf_ok(self, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by id; expired ones are dropped when met and when the store is full."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def start(self, session: Session) -> str:
        now = time.time()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.live(now)}
        if len(self._sessions) >= MAX_SESSIONS:  # still full: the oldest goes
            oldest = min(self._sessions, key=lambda k: self._sessions[k].last_used)
            del self._sessions[oldest]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = session
        return session_id

    def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id) if session_id else None
        now = time.time()
        if session is None:
            return None
        if not session.live(now):
            del self._sessions[session_id]
            return None
        session.last_used = now
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def cookie_options(max_age: int | None) -> dict:
    """The attributes of every console cookie (a `__Host-` cookie requires Secure, Path=/
    and no Domain)."""
    return {
        "max_age": max_age,
        "path": "/",
        "secure": True,
        "httponly": True,
        "samesite": "strict",
    }
