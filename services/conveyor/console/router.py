"""/ui: the console's page and assets (shipped in the package: nothing loads from another
host), served with a strict Content-Security-Policy, and its session routes (sign in with
an API key, read the session, sign out). Every action the page takes is a /v1 call.
"""

import hashlib
from pathlib import Path

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.auth import authenticate, charge, presented_key, principal_of
from conveyor.api.problems import ProblemError
from conveyor.api.sessions import (
    close_session,
    cookie_header,
    find_session,
    open_session,
    session_token,
)
from conveyor.api.state import state_of
from conveyor.core.apikeys import Principal, hash_key

STATIC_DIR = Path(__file__).with_name("static")
PREFIX = "/ui"

# Only the page's own scripts, styles and API calls; no inline code, no framing, no forms
# posted elsewhere, no base URL games.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class ConsoleHeaders:
    """Adds the security headers to every /ui response (the page, its assets, its
    session routes and their errors).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to a /ui response's start."""
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _session_body(principal: Principal, csrf: str) -> bytes:
    return orjson.dumps({"key_id": principal.key_id, "tenant": principal.tenant,
                         "scopes": sorted(principal.scopes), "csrf_token": csrf})  # fmt: skip


def asset_version() -> str:
    """A digest of every asset: their URLs carry it, so browsers may keep them for good
    (a release with other assets has other URLs), and a return visit loads only the page.
    """
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def console_router() -> APIRouter:
    """The page, its assets and the session routes (not in the OpenAPI document)."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    version = asset_version()
    assets = f"{PREFIX}/static/{version}/"
    page = (STATIC_DIR / "index.html").read_text().replace(f"{PREFIX}/static/", assets)

    @router.get("")
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    @router.get("/")
    async def console_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @router.get("/static/{tag}/{name:path}")
    async def console_asset(tag: str, name: str) -> FileResponse:
        path = (STATIC_DIR / name).resolve()
        if tag != version or not path.is_file() or STATIC_DIR.resolve() not in path.parents:
            raise ProblemError(404, "Not found", f"No console asset {name!r}.", slug="not-found")
        return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @router.post("/session")
    async def sign_in(request: Request) -> Response:
        """Sign in: the API key comes once, in `Authorization: Bearer` (never a body, a URL
        or the page); the answer sets the session cookie and gives the page its CSRF token.
        """
        state = state_of(request)
        principal = principal_of(state.keys, request.headers)  # the 401 for a bad key
        request.state.principal, request.state.via = principal, "console"
        request.state.charged = True
        refused = await charge(state, principal)  # a session per token: bounded by the rate
        if refused is not None:
            raise refused
        # The key principal_of checked (the same parsing), never another header's.
        token, csrf = await open_session(state, hash_key(presented_key(request.headers) or ""))
        return Response(_session_body(principal, csrf), media_type="application/json",
                        headers={"Set-Cookie": cookie_header(state, token),
                                 "Cache-Control": "no-store"})  # fmt: skip

    @router.get("/session")
    async def current_session(request: Request) -> Response:
        """Who the session is, and its CSRF token (the page keeps it in memory only)."""
        state = state_of(request)
        token = session_token(request.headers)
        session = await find_session(state, token) if token else None
        if session is None:
            raise ProblemError(401, "Unauthorized", "Not signed in.", slug="unauthorized")
        return Response(_session_body(session.principal, session.csrf_token),
                        media_type="application/json",
                        headers={"Cache-Control": "no-store"})  # fmt: skip

    @router.delete("/session", status_code=204)
    async def sign_out(request: Request) -> Response:
        """End the session (its CSRF token required, as for every change)."""
        state = state_of(request)
        await authenticate(request)  # 401 without a session, 403 without its CSRF token
        token = session_token(request.headers)
        if token:
            await close_session(state, token)
        return Response(status_code=204,
                        headers={"Set-Cookie": cookie_header(state, "", max_age=0)})  # fmt: skip

    return router
