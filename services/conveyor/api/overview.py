"""/v1/overview: what the console's first page shows. An admin sees the platform: per tier
the jobs waiting, running and held, live workers and pauses, the delayed and dead-letter
counts, and runs ended per minute. A tenant sees the same about its own jobs (workers and
paused tiers are the platform's: they decide when its jobs run).
"""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from conveyor.api.auth import Reader
from conveyor.api.deps import PROBLEM_RESPONSES, State
from conveyor.api.pauses import Pause
from conveyor.core.apikeys import Scope
from conveyor.core.queues import Queue
from conveyor.core.schedules import iso
from conveyor.jobstore import fairq
from conveyor.jobstore.keys import quota_queued
from conveyor.jobstore.liveness import live_worker_window
from conveyor.jobstore.model import text_of

MINUTES = 15
OUTCOMES = ("succeeded", "failed", "retrying")
# A tenant's dead letters are counted up to this many (ZINTERCARD's limit bounds the work).
DEAD_COUNT_LIMIT = 10_000


class TierFigures(BaseModel):
    """One tier now."""

    queue: Queue
    waiting: int = Field(..., description="Ready to run (the caller's own, for a tenant).")
    running: int
    held: int = Field(..., description="Held by flow control (platform view only; else 0).")
    workers: int = Field(..., description="Live workers consuming the tier.")
    paused: bool


class Minute(BaseModel):
    """Runs that ended in one minute (Redis' clock)."""

    at: str
    succeeded: int
    failed: int
    retried: int


class Overview(BaseModel):
    """The platform (admin) or the caller's tenant, now and over the last minutes."""

    scope: str = Field(..., description="`all` (admin) or `tenant`.")
    tenant: str | None
    tiers: list[TierFigures]
    delayed: int
    dead: int
    paused: list[Pause]
    minutes: list[Minute] = Field(..., description=f"The last {MINUTES} minutes, oldest first.")


def overview_router() -> APIRouter:
    """GET /v1/overview."""
    router = APIRouter(tags=["overview"], responses=PROBLEM_RESPONSES)

    @router.get("/v1/overview", response_model=Overview, summary="Platform overview",
                operation_id="get_overview")  # fmt: skip
    async def get_overview(state: State, principal: Reader) -> Overview:
        """Per tier waiting, running, held, live workers and pauses; delayed and dead
        counts; runs ended per minute over the last minutes. Platform-wide for an admin key,
        the caller's own jobs for a tenant's.
        """
        keys = state.store.keys
        tenant = None if principal.can(Scope.ADMIN) else principal.tenant
        seconds, micros = await state.redis.time()
        now = int(seconds) + int(micros) / 1e6
        window = live_worker_window(state.settings.worker.visibility_timeout_seconds)
        minute = int(now // 60)
        queues = [str(q) for q in Queue]
        async with state.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zcount(keys.consumers(queue), now - window, "+inf")
                if tenant is None:
                    pipe.llen(keys.queue(queue))  # Conveyor fills no priority sub-list
                    pipe.zcard(keys.running(queue))
                    pipe.llen(keys.fair_parked(queue))
                else:
                    pipe.hget(keys.quota(tenant), quota_queued(queue))
                    pipe.hget(keys.fair_active(queue), tenant)
            if tenant is None:
                pipe.zcard(keys.delayed)
                pipe.zcard(keys.dead)
            else:
                pipe.hget(keys.quota(tenant), "delayed")
                pipe.zintercard(2, [keys.dead, keys.index_tenant(tenant)],
                                limit=DEAD_COUNT_LIMIT)  # fmt: skip
            for m in range(minute - MINUTES + 1, minute + 1):
                pipe.hgetall(keys.stats(m))
            replies: list[Any] = await pipe.execute()
        paused = await fairq.paused_async(state.redis, keys)
        it = iter(replies)
        tiers = []
        for queue in queues:
            workers = int(next(it))
            if tenant is None:
                waiting = int(next(it))
                running, held = int(next(it)), int(next(it))
            else:
                waiting, running, held = _int(next(it)), _int(next(it)), 0
            is_paused = any(kind == fairq.FlowKind.TIER and name == queue for kind, name in paused)
            tiers.append(TierFigures(queue=Queue(queue), waiting=waiting, running=running,
                                     held=held, workers=workers, paused=is_paused))  # fmt: skip
        delayed, dead = _int(next(it)), _int(next(it))
        minutes = []
        for m in range(minute - MINUTES + 1, minute + 1):
            counts = {text_of(k): int(v) for k, v in next(it).items()}
            prefix = "" if tenant is None else f"tenant/{tenant}/"

            def total(outcome: str, counts: dict[str, int] = counts, prefix: str = prefix) -> int:
                if prefix:
                    return counts.get(prefix + outcome, 0)
                return sum(counts.get(f"{q}/{outcome}", 0) for q in queues)

            minutes.append(Minute(at=iso(m * 60) or "", succeeded=total("succeeded"),
                                  failed=total("failed"), retried=total("retrying")))  # fmt: skip
        visible = [
            Pause(kind=kind, name=name)
            for kind, name in paused
            if tenant is None or kind != fairq.FlowKind.TENANT or name == tenant
        ]
        return Overview(scope="all" if tenant is None else "tenant", tenant=tenant, tiers=tiers,
                        delayed=delayed, dead=dead, paused=visible, minutes=minutes)  # fmt: skip

    return router


def _int(value: Any) -> int:
    return int(value) if value is not None else 0
