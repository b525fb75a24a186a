"""The console's session store alone: ids, idle and absolute expiry, token expiry, the
CSRF comparison, the bound on how many sessions are held (api_service/console/sessions.py)."""

from __future__ import annotations

import time

from api_service.console import sessions
from api_service.console.sessions import IDLE_S, MAX_AGE_S, Session, SessionStore


def session(**changes: float) -> Session:
    made = Session(token="qt_secret", name="alice", role="operator", token_expires_at=0)
    for name, value in changes.items():
        setattr(made, name, value)
    return made


def test_a_session_is_found_by_its_random_id_only() -> None:
    store = SessionStore()
    first, second = store.start(session()), store.start(session())
    assert first != second and len(first) >= 40
    assert store.get(first) is not None
    assert store.get("") is None and store.get("qt_secret") is None
    store.end(first)
    assert store.get(first) is None and store.get(second) is not None


def test_sessions_end_when_idle_too_long_too_old_or_their_token_expired() -> None:
    store = SessionStore()
    now = time.time()
    idle = store.start(session(last_used=now - IDLE_S - 1))
    old = store.start(session(started=now - MAX_AGE_S - 1))
    expired = store.start(session(token_expires_at=int(now) - 1))
    fresh = store.start(session())
    assert [store.get(s) for s in (idle, old, expired)] == [None, None, None]
    used = store.get(fresh)
    assert used is not None and used.last_used >= now


def test_the_csrf_token_must_be_this_sessions() -> None:
    one, other = session(), session()
    assert one.csrf != other.csrf
    assert one.csrf_ok(one.csrf)
    assert not one.csrf_ok(other.csrf) and not one.csrf_ok("")


def test_a_full_store_drops_ended_sessions_then_the_least_recently_used(monkeypatch) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    store = SessionStore()
    stale = store.start(session(last_used=time.time() - IDLE_S - 1))
    kept = [store.start(session()) for _ in range(2)]
    newest = store.start(session())  # the stale one made room
    assert store.get(stale) is None and all(store.get(s) for s in (*kept, newest))
    store._sessions[kept[0]].last_used -= 100
    store.start(session())  # full of live ones: the least recently used goes
    assert store.get(kept[0]) is None and store.get(kept[1]) is not None


def test_cookies_are_host_only_secure_http_only_and_strict() -> None:
    assert sessions.SESSION_COOKIE.startswith("__Host-")
    options = sessions.cookie_options(60)
    assert options["secure"] and options["httponly"] and options["samesite"] == "strict"
    assert options["path"] == "/" and "domain" not in options
