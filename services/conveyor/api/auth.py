"""Authentication, scopes and per-tenant rate limits of API requests.

Keys come from the keys file (re-read when it changes, so keys rotate without a restart) or an
inline document. A presented key is hashed and looked up; the key itself is never logged nor
echoed. Rate limits are token buckets in Redis shared by every API replica: submissions take
their token inside accept.lua, other requests through `rate_limited` below.
"""

import asyncio
import functools
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response

from conveyor.api.problems import ProblemError
from conveyor.api.sessions import check_csrf, find_session, session_token
from conveyor.api.state import ApiState, TenantLimitsCache, state_of
from conveyor.core.apikeys import (
    DEVELOPMENT_PRINCIPAL,
    KeyRing,
    KeysDocument,
    Principal,
    Scope,
    TenantEntry,
    TenantLimits,
    parse_keys,
)
from conveyor.core.settings import AuthSettings

log = logging.getLogger(__name__)


class MissingKeysError(RuntimeError):
    """Authentication is on but no keys are configured."""


class KeySource:
    """The current key ring; `refresh` re-reads the keys file when it has changed."""

    def __init__(
        self, settings: AuthSettings, on_reload: Callable[[bool], None] | None = None
    ) -> None:
        """`on_reload(loaded)` is told of every reload of a changed file (True: loaded)."""
        self.settings = settings
        self.on_reload = on_reload
        self._stamp: tuple[int, int, int] | None = None
        if settings.disabled:
            self.ring = KeyRing(KeysDocument())
        elif settings.keys_file is not None:
            self.ring = _ring(settings.keys_file.read_text())
            self._stamp = _stamp(settings.keys_file)
        elif settings.keys is not None:
            self.ring = _ring(settings.keys.get_secret_value())
        else:
            raise MissingKeysError(
                "API keys are required: set CONVEYOR_AUTH__KEYS_FILE or CONVEYOR_AUTH__KEYS "
                "(or CONVEYOR_AUTH__DISABLED=true for local development only)"
            )

    def refresh(self) -> bool:
        """Reload the keys file if it changed; a broken file keeps the previous keys."""
        path = self.settings.keys_file
        if path is None:
            return False
        try:
            stamp = _stamp(path)
            if stamp == self._stamp:
                return False
            ring = _ring(path.read_text())
        except Exception as exc:  # noqa: BLE001 - any broken file (even a RecursionError) keeps the keys
            # The message names the file and the fault, never a key: a ValidationError shows
            # field values, but the file holds only hashes. The stamp is not taken, so a
            # broken file is retried (and counted) every interval until it is mended.
            log.error("keys file %s not reloaded, keeping the previous keys: %s", path, exc)
            self._told(False)
            return False
        self.ring, self._stamp = ring, stamp
        log.info("keys file %s reloaded: %d keys", path, len(ring))
        self._told(True)
        return True

    def _told(self, loaded: bool) -> None:
        if self.on_reload is not None:
            try:
                self.on_reload(loaded)
            except Exception:
                log.warning("keys reload hook failed", exc_info=True)

    async def watch(self) -> None:
        """Refresh every `reload_interval_seconds` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_seconds)
            # Off the event loop: a slow file system (or a FIFO) must not stall requests.
            await asyncio.to_thread(self.refresh)


def _ring(text: str) -> KeyRing:
    """The key ring of a keys document; a document without keys is refused like a broken
    one: it is what a truncate-then-write caught halfway looks like, and loading it would
    lock every client out.
    """
    ring = KeyRing(parse_keys(text))
    if len(ring) == 0:
        raise ValueError("the keys document lists no keys")
    return ring


def _stamp(path: Path) -> tuple[int, int, int]:
    # A Kubernetes Secret volume swaps a symlink: stat follows it, so the inode changes.
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns, info.st_size


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        slug="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="conveyor"'},
    )


async def authenticate(request: Request) -> Principal:
    """The caller's principal from `Authorization: Bearer`, `X-API-Key` or a console
    session; 401 otherwise (403 for a session's request failing the CSRF check).

    A plain function called by the dependencies below rather than a chain of dependencies:
    FastAPI's dependency solving was a quarter of the accept path's CPU. The schemes are
    declared in OpenAPI by `security_schemes`. The body gate may have authenticated the
    request already (one with a body): its answer is used.
    """
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal, via = await principal_for(state_of(request), request.headers, request.method)
        request.state.principal, request.state.via = principal, via
    return principal


async def principal_for(
    state: ApiState, headers: Mapping[str, str], method: str
) -> tuple[Principal, str]:
    """(principal, `api` or `console`) of a request's headers: an API key when one is
    presented, else the console session of its cookie (whose state-changing requests must
    pass the CSRF check). Raises the 401 or 403 problem.
    """
    source = state.keys
    if source.settings.disabled or "authorization" in headers or "x-api-key" in headers:
        return principal_of(source, headers), "api"
    token = session_token(headers)
    if token is None:
        return principal_of(source, headers), "api"  # the 401 naming both headers
    session = await find_session(state, token)
    if session is None:
        raise _unauthorized("The console session has ended; sign in again.")
    check_csrf(session, method, headers)
    return session.principal, "console"


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents: `Authorization: Bearer <key>`, else `X-API-Key`."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return headers.get("x-api-key") or None


def principal_of(source: KeySource, headers: Mapping[str, str]) -> Principal:
    """The principal of the key in `headers` (lower-case names), or a 401 problem. Also
    called before a request's body is read (`limits.BodyGate`).
    """
    if source.settings.disabled:
        return DEVELOPMENT_PRINCIPAL
    presented = presented_key(headers)
    if not presented:
        raise _unauthorized("Send an API key as `Authorization: Bearer <key>` or `X-API-Key`.")
    principal = source.ring.authenticate(presented)
    if principal is None:
        raise _unauthorized("The API key is not valid.")
    return principal


async def authorize(request: Request, scope: Scope) -> Principal:
    """The caller, who must hold `scope` (or `admin`); 401 for none, 403 without it."""
    principal = await authenticate(request)
    if not principal.can(scope):
        raise ProblemError(
            403, "Forbidden", f"This operation needs the {scope!s} scope.", slug="forbidden"
        )
    return principal


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """Dependency: the caller, who must hold `scope` (or `admin`); 403 otherwise."""

    async def dependency(request: Request) -> Principal:
        return await authorize(request, scope)

    return dependency


def security_schemes(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declare the API-key schemes in an OpenAPI document, required on every /v1 operation."""
    components = openapi.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `Authorization: Bearer <key>`.",
            },
            "apiKey": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "An API key, as an alternative header.",
            },
        }
    )
    for path, operations in openapi.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
    return openapi


def tenant_limits(request: Request, tenant: str) -> TenantLimits:
    """The tenant's own rate limit, or the deployment's."""
    return limits_for(state_of(request), tenant)


_T = TypeVar("_T")
# Tenants whose limits a process keeps built at most (they are the key ring's tenants, and a
# schedule's, so the bound is never reached in practice; past it the cache starts afresh).
MAX_CACHED_TENANTS = 10_000


def limits_for(state: ApiState, tenant: str) -> TenantLimits:
    """The tenant's own limits (keys file) over the deployment's; built once per tenant
    and key ring (a reload brings a new ring, and with it new limits), since every request
    asks (a model built per request was 2 % of a submission's CPU).
    """
    ring = state.keys.ring
    cached = state.tenant_limits
    if cached.ring is not ring or len(cached.by_tenant) >= MAX_CACHED_TENANTS:
        # A new cache object, not the old one emptied: limits built from a ring only ever go
        # into that ring's cache, even if a caller on another thread were to overlap.
        cached = state.tenant_limits = TenantLimitsCache(ring)
    limits = cached.by_tenant.get(tenant)
    if limits is None:
        limits = _limits_of(state, ring, tenant)
        cached.by_tenant[tenant] = limits
    return limits


def _limits_of(state: ApiState, ring: KeyRing, tenant: str) -> TenantLimits:
    own = ring.tenants.get(tenant) or TenantEntry()
    limits, flow = state.settings.limits, state.settings.flow
    return TenantLimits(
        rate_per_second=_own_or(own.rate_per_second, limits.rate_per_second),
        burst=_own_or(own.burst, limits.burst),
        weight=own.weight,
        concurrency_per_tier=own.concurrency_per_tier,
        max_queued_per_tier=_own_or(own.max_queued_per_tier, flow.tenant_max_queued_per_tier),
        max_delayed=_own_or(own.max_delayed, flow.tenant_max_delayed),
        max_bytes=_own_or(own.max_bytes, flow.tenant_max_bytes),
    )


def _own_or(own: _T | None, deployment: _T) -> _T:
    return deployment if own is None else own


def rate_limit_headers(limits: TenantLimits, left: int) -> dict[str, str]:
    """RateLimit-* headers (IETF draft): the bucket's size, what is left, seconds to refill."""
    rate, burst = limits.rate_per_second, limits.burst
    if rate <= 0:
        return {}
    size, policy = _bucket_texts(burst, rate)  # the same for each of a tenant's answers
    return {
        "RateLimit-Limit": size,
        "RateLimit-Remaining": str(max(0, left)),
        "RateLimit-Reset": str(math.ceil(max(0, burst - left) / rate)),
        "RateLimit-Policy": policy,
    }


@functools.lru_cache(maxsize=256)
def _bucket_texts(burst: int, rate: float) -> tuple[str, str]:
    """A bucket's RateLimit-Limit and RateLimit-Policy values."""
    return str(burst), f"{burst};w={math.ceil(burst / rate)}"


def too_many_requests(limits: TenantLimits, wait_ms: int) -> ProblemError:
    """The 429 for a tenant out of tokens."""
    retry_after = max(1, math.ceil(wait_ms / 1000))
    headers = {**rate_limit_headers(limits, 0), "Retry-After": str(retry_after)}
    headers["RateLimit-Reset"] = str(retry_after)
    return ProblemError(
        429,
        "Too many requests",
        f"This tenant's rate limit is {limits.rate_per_second:g} requests per second "
        f"(bursts of {limits.burst}); retry after {retry_after} s.",
        slug="rate-limited",
        headers=headers,
    )


def rate_limited(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """Dependency: `require(scope)`, then one token from the tenant's bucket (429 when empty)."""

    async def dependency(request: Request, response: Response) -> Principal:
        principal = await authorize(request, scope)
        limits = tenant_limits(request, principal.tenant)
        request.state.charged = True
        if limits.rate_per_second > 0:
            store = state_of(request).store
            taken, left, wait_ms = await store.take_token(
                principal.tenant, limits.rate_per_second, limits.burst
            )
            if not taken:
                raise too_many_requests(limits, wait_ms)
            response.headers.update(rate_limit_headers(limits, left))
        return principal

    return dependency


async def charge_rejected(request: Request) -> ProblemError | None:
    """Take a token for an authenticated request that failed before it took one (an invalid
    or unparsable body, a refused URL, a 403, an unknown route, a wrong method, an internal
    error), so every failure counts against the tenant's rate limit too. Returns the 429 to
    answer instead when the bucket is empty.
    """
    if getattr(request.state, "charged", False):
        return None
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        try:  # a request refused before any dependency ran (404, 405): its headers say who
            principal, _ = await principal_for(state_of(request), request.headers, "GET")
        except ProblemError:
            return None  # not authenticated: nobody to charge
    request.state.charged = True
    return await charge(state_of(request), principal)


async def charge(state: ApiState, principal: Principal) -> ProblemError | None:
    """One token from `principal`'s tenant's bucket; the 429 when it is empty."""
    limits = limits_for(state, principal.tenant)
    if limits.rate_per_second <= 0:
        return None
    taken, _, wait_ms = await state.store.take_token(
        principal.tenant, limits.rate_per_second, limits.burst
    )
    return None if taken else too_many_requests(limits, wait_ms)


Reader = Annotated[Principal, Depends(rate_limited(Scope.JOBS_READ))]
Writer = Annotated[Principal, Depends(rate_limited(Scope.JOBS_WRITE))]
Admin = Annotated[Principal, Depends(rate_limited(Scope.ADMIN))]
