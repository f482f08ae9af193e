"""The audit log: every state-changing call an authenticated caller makes, through the API
or the console (who: key id and tenant; what: the operation; its target; when; the outcome),
appended to a capped Redis stream after the answer and written to the log. `GET /v1/audit`
lists it for admins.
"""

import asyncio
import contextlib
import logging
import re
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.auth import Admin
from conveyor.api.deps import PROBLEM_RESPONSES, State
from conveyor.api.pages import Limit, invalid_cursor
from conveyor.api.sessions import UNSAFE_METHODS
from conveyor.api.state import ApiState
from conveyor.core.apikeys import TENANT_PATTERN, Principal
from conveyor.core.audit import AuditEntry
from conveyor.jobstore.audit_log import ENTRY_FIELD, append_audit
from conveyor.jobstore.model import text_of

log = logging.getLogger("conveyor.audit")

# Operations whose audit entry `CONSOLE__AUDIT_SUBMISSIONS=false` leaves out (the hot path).
SUBMISSIONS = frozenset({"submit_job", "submit_jobs", "submit_workflow"})
_STREAM_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"  # each part below 2**64
# Audit entries waiting to be stored at most (Redis slow or silent): past it an entry is
# only logged. The writer stores up to WRITE_BATCH at once.
MAX_PENDING_WRITES = 1000
WRITE_BATCH = 100
WRITE_WINDOW_SECONDS = 0.05
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

    def __init__(self, app: ASGIApp, state: ApiState, writer: "AuditWriter") -> None:
        self.app = app
        self.state = state
        self.writer = writer

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
        self.writer.submit(entry)


class AuditWriter:
    """Stores audit entries in Redis apart from the requests, in the order they were
    answered, by one task (a pipeline of those waiting at a time): the answer is sent, but a
    connection's next request waits for the middleware to return, and a silent Redis would
    hold it for the client's socket timeout. The API's lifespan starts and closes it.
    """

    def __init__(self, state: ApiState) -> None:
        self.state = state
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: AsyncRedis | None = None

    def start(self, client: AsyncRedis) -> None:
        """Start the writer (in the running loop) on a client of its own: its writes never
        take the connections requests need (with Redis silent, they would time out twice).
        """
        self._client = client
        self._queue = asyncio.Queue(MAX_PENDING_WRITES)
        self._task = asyncio.create_task(self._write(self._queue), name="conveyor-audit")

    def submit(self, entry: dict[str, Any]) -> None:
        """Queue an entry (already logged); dropped with an error log when the queue is full
        or the writer is not running.
        """
        if self._queue is None:
            log.error("audit entry not stored (no writer): %s", entry)
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            log.error("audit entry not stored (%d pending): %s", self._queue.qsize(), entry)

    async def close(self, timeout: float = 2.0) -> None:
        """Store what is queued (for up to `timeout` seconds), then stop."""
        queue, task = self._queue, self._task
        self._queue = self._task = None
        if queue is None or task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await queue.join()
        except TimeoutError:
            log.error("%d audit entries not stored at shutdown", queue.qsize())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._client is not None:
            await self._client.aclose()

    async def _write(self, queue: "asyncio.Queue[dict[str, Any]]") -> None:
        keys, cap = self.state.store.keys, self.state.settings.console.audit_max_entries
        while True:
            batch = [await queue.get()]
            # Unless a batch is waiting already, gather what comes in the next moment: a
            # pipeline of one or two entries cost a submission a tenth of its CPU under load.
            if queue.qsize() < WRITE_BATCH - 1:
                await asyncio.sleep(WRITE_WINDOW_SECONDS)
            while not queue.empty() and len(batch) < WRITE_BATCH:
                batch.append(queue.get_nowait())
            try:
                assert self._client is not None
                # One JSON field per entry: each argument costs the API more to send than
                # Redis to store (the audit was a sixth of a submission's CPU as 10 fields).
                await append_audit(self._client, keys, cap, [orjson.dumps(e) for e in batch])
            except (RedisError, OSError) as exc:  # the log lines still have them
                log.error("%d audit entries not stored (%s): %s", len(batch), exc, batch)
            finally:
                for _ in batch:
                    queue.task_done()


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
    packed = fields.get(ENTRY_FIELD.encode(), fields.get(ENTRY_FIELD))
    if packed is not None:
        values = {k: str(v) for k, v in orjson.loads(packed).items()}
    else:  # stored field by field by earlier releases
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
