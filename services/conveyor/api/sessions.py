"""Console sessions: signing in with an API key (sent once, as `Authorization: Bearer`)
opens a session kept in Redis under the SHA-256 of a random cookie; the browser holds only
that cookie (HttpOnly, SameSite=Strict, Secure) and the page only a CSRF token, which every
state-changing request must echo in `X-CSRF-Token`. The session names its key by the key's
hash, so the key's current tenant and scopes apply to every request, and a key removed from
the keys file ends its sessions at once.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import cookie_parser

from conveyor.api.problems import ProblemError
from conveyor.api.state import ApiState
from conveyor.core.apikeys import DEVELOPMENT_PRINCIPAL, Principal
from conveyor.jobstore.model import text_of

SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Session:
    """A signed-in console: who it is and the token its page echoes."""

    principal: Principal
    csrf_token: str


def _key(state: ApiState, token: str) -> str:
    return state.store.keys.session(hashlib.sha256(token.encode()).hexdigest())


async def open_session(state: ApiState, key_hash: str) -> tuple[str, str]:
    """A new session for the key with `key_hash`: (cookie token, CSRF token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    key = _key(state, token)
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"key": key_hash, "csrf": csrf})
        pipe.expire(key, state.settings.console.session_ttl_seconds)
        await pipe.execute()
    return token, csrf


async def find_session(state: ApiState, token: str) -> Session | None:
    """The live session of a cookie token, or None (unknown, expired, or its key gone)."""
    if not token or len(token) > 100:
        return None
    raw = await state.redis.hmget(_key(state, token), ["key", "csrf"])
    if raw[0] is None or raw[1] is None:
        return None
    if state.keys.settings.disabled:  # local development: every caller is the same
        return Session(DEVELOPMENT_PRINCIPAL, text_of(raw[1]))
    principal = state.keys.ring.by_hash(text_of(raw[0]))
    return None if principal is None else Session(principal, text_of(raw[1]))


async def close_session(state: ApiState, token: str) -> None:
    """End a session (sign-out)."""
    await state.redis.delete(_key(state, token))


def session_token(headers: Any) -> str | None:
    """The session cookie's value in a request's headers, if any."""
    raw = headers.get("cookie")
    if not raw:
        return None
    # Starlette's lenient parser, as browsers send: another app's cookie on the same host
    # that the strict parser (http.cookies) rejects must not hide the session's.
    return cookie_parser(raw).get(SESSION_COOKIE) or None


def cookie_header(state: ApiState, token: str, max_age: int | None = None) -> str:
    """The Set-Cookie value of a session (or, with max_age 0, of its removal)."""
    age = state.settings.console.session_ttl_seconds if max_age is None else max_age
    secure = "; Secure" if state.settings.console.secure_cookie else ""
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={age}; HttpOnly; SameSite=Strict{secure}"


def check_csrf(session: Session, method: str, headers: Any) -> None:
    """403 for a state-changing request of a session without its CSRF token, or sent from
    another site (a cross-site form post carries neither; SameSite=Strict also keeps the
    cookie from it).
    """
    if method not in UNSAFE_METHODS:
        return
    if headers.get("sec-fetch-site") == "cross-site" or not _same_origin(headers):
        raise _csrf("The request comes from another site.")
    presented = headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(presented.encode(), session.csrf_token.encode()):
        raise _csrf(f"Send the session's CSRF token in {CSRF_HEADER.title()}.")


def _same_origin(headers: Any) -> bool:
    origin = headers.get("origin")
    if not origin:
        return True  # not sent by this browser for this request: the token decides
    return bool(urlsplit(origin).netloc == headers.get("host"))


def _csrf(detail: str) -> ProblemError:
    return ProblemError(403, "CSRF check failed", detail, slug="csrf")
