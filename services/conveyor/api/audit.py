"""The audit log: every state-changing call an authenticated caller makes, through the API
or the console (who: key id and tenant; what: the operation; its target; when; the outcome),
appended to a capped Redis stream after the answer and written to the log. `GET /v1/audit`
lists it for admins.
"""

import logging
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.auth import Admin
from conveyor.api.deps import PROBLEM_RESPONSES, State
from conveyor.api.pages import Limit, invalid_cursor
from conveyor.api.sessions import UNSAFE_METHODS
from conveyor.api.state import ApiState
from conveyor.core.apikeys import TENANT_PATTERN, Principal
from conveyor.core.audit import AuditEntry
from conveyor.jobstore.model import text_of

log = logging.getLogger("conveyor.audit")

# Operations whose audit entry `CONSOLE__AUDIT_SUBMISSIONS=false` leaves out (the hot path).
SUBMISSIONS = frozenset({"submit_job", "submit_jobs", "submit_workflow"})
_STREAM_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"  # each part below 2**64
# Entries a listing reads past to fill a page of one tenant's (bounds the work of a call).
SCAN_BUDGET = 5000


class AuditPage(BaseModel):
    """Newest first."""

    items: list[AuditEntry]
    next_cursor: str | None = None


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "refused" if status < 500 else "error"


class AuditMiddleware:
    """Records every authenticated state-changing request once it has been answered."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, note its answer's status and Location, then record it."""
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        answer: dict[str, Any] = {}

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name == b"location":
                        answer["location"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, noting)
        finally:
            await self._record(scope, answer)

    async def _record(self, scope: Scope, answer: dict[str, Any]) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        principal: Principal | None = state.get("principal")
        if principal is None:
            return  # not authenticated: nobody to record, and no way to flood the log
        status = int(answer.get("status", 500))
        if status == 429:
            return  # refused by the rate limit: recording it would let a tenant flood the log
        route = scope.get("route")
        action = getattr(route, "name", None) or "unmatched"
        if action in SUBMISSIONS and not self.state.settings.console.audit_submissions:
            return
        params = scope.get("path_params") or {}
        target = "/".join(str(v) for v in params.values()) or answer.get("location", "")
        entry = {"at": f"{time.time():.3f}", "key_id": principal.key_id,
                 "tenant": principal.tenant, "via": state.get("via", "api"), "action": action,
                 "method": scope["method"], "path": scope["path"], "target": target,
                 "status": status, "outcome": _outcome(status)}  # fmt: skip
        # repr() for what the caller chose (the path's ids): a newline in a URL must not
        # write a second, forged line.
        log.info("audit %(action)s %(target)r by %(key_id)s (%(tenant)s, %(via)s): "
                 "%(status)s %(outcome)s", entry, extra={"audit": entry})  # fmt: skip
        try:
            await self.state.redis.xadd(
                self.state.store.keys.audit, entry,  # type: ignore[arg-type]
                maxlen=self.state.settings.console.audit_max_entries, approximate=True,
            )  # fmt: skip
        except (RedisError, OSError) as exc:  # the log line above still has it
            log.error("audit entry not stored (%s): %s", exc, entry)


def audit_router() -> APIRouter:
    """GET /v1/audit."""
    router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)

    @router.get("", response_model=AuditPage, summary="List the audit log",
                operation_id="list_audit")  # fmt: skip
    async def list_audit(
        state: State,
        _: Admin,
        limit: Limit = 50,
        cursor: Annotated[str | None, Query(max_length=45)] = None,
        tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN)] = None,
    ) -> AuditPage:
        """State-changing calls, newest first; `tenant` keeps one tenant's (admin only)."""
        if cursor is not None and not re.match(_STREAM_ID, cursor):
            raise invalid_cursor()
        end = f"({cursor}" if cursor else "+"
        items: list[AuditEntry] = []
        scanned, last = 0, None
        while len(items) < limit and scanned < SCAN_BUDGET:
            batch = await state.redis.xrevrange(state.store.keys.audit, end, "-", count=limit)
            if not batch:
                last = None
                break
            for entry_id, fields in batch:
                scanned += 1
                last = text_of(entry_id)
                entry = _entry(last, fields or {})
                if tenant is None or entry.tenant == tenant:
                    items.append(entry)
                    if len(items) == limit:
                        break
            end = f"({last}"
            if len(batch) < limit:
                last = None if len(items) < limit else last
                break
        return AuditPage(items=items, next_cursor=last)

    return router


def _entry(entry_id: str, fields: dict[Any, Any]) -> AuditEntry:
    values = {text_of(k): text_of(v) for k, v in fields.items()}
    at = float(values.get("at", "0"))
    return AuditEntry(
        id=entry_id,
        at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z",
        key_id=values.get("key_id", ""),
        tenant=values.get("tenant", ""),
        via=values.get("via", "api"),
        action=values.get("action", ""),
        method=values.get("method", ""),
        path=values.get("path", ""),
        target=values.get("target", ""),
        status=int(values.get("status", "0")),
        outcome=values.get("outcome", ""),
    )
