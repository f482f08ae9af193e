"""/v1/admin/pauses: pause and resume a tier, a task or a tenant (the admin scope only).

Paused work stays queued and durable and running jobs finish; a resume puts back what the
pause set aside (docs/flow-control.md).
"""

import re

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from conveyor.api.auth import Admin
from conveyor.api.deps import PROBLEM_RESPONSES, State
from conveyor.api.problems import ProblemError
from conveyor.core.apikeys import SYSTEM_TENANT, TENANT_PATTERN
from conveyor.core.queues import Queue
from conveyor.jobstore import fairq
from conveyor.jobstore.fairq import FlowKind

_TENANT = re.compile(TENANT_PATTERN)


class Pause(BaseModel):
    """One paused tier, task or tenant."""

    kind: FlowKind = Field(..., description="What is paused: a tier, a task or a tenant.")
    name: str = Field(..., description="The tier, task or tenant name.")


class Pauses(BaseModel):
    """Everything paused."""

    paused: list[Pause]


def pauses_router() -> APIRouter:
    """List, pause and resume."""
    router = APIRouter(
        prefix="/v1/admin/pauses", tags=["flow control"], responses=PROBLEM_RESPONSES
    )

    @router.get("", response_model=Pauses, summary="List what is paused")
    async def list_pauses(state: State, _: Admin) -> Pauses:
        """Every paused tier, task and tenant."""
        found = await fairq.paused_async(state.redis, state.store.keys)
        return Pauses(paused=[Pause(kind=kind, name=name) for kind, name in found])

    @router.put("/{kind}/{name}", response_model=Pause, summary="Pause a tier, task or tenant",
                responses={200: {"description": "Already paused"},
                           201: {"description": "Paused"}})  # fmt: skip
    async def pause(kind: str, name: str, state: State, _: Admin, response: Response) -> Pause:
        """Stop starting its jobs: they stay queued (durable), running ones finish. Idempotent.
        `kind` is `tier`, `task` or `tenant`.
        """
        target = _target(state, kind, name)
        if await fairq.pause_async(state.redis, state.store.keys, target, name):
            response.status_code = 201
        return Pause(kind=target, name=name)

    @router.delete("/{kind}/{name}", status_code=204, summary="Resume a tier, task or tenant")
    async def resume(kind: str, name: str, state: State, _: Admin) -> Response:
        """Start its jobs again, oldest first; 404 when it was not paused."""
        target = _target(state, kind, name)
        limit = state.settings.flow.tenant_concurrency_per_tier
        if not await fairq.resume_async(state.redis, state.store.keys, target, name, limit):
            raise ProblemError(404, "Not paused", f"The {kind} {name!r} is not paused.",
                               slug="not-paused")  # fmt: skip
        return Response(status_code=204)

    return router


def _target(state: State, kind: str, name: str) -> FlowKind:
    """What the path names; a kind or name that could never be paused is a 404 (as every
    path that names nothing), not a pause of nothing.
    """
    target = next((k for k in FlowKind if k == kind), None)
    known = (
        target is not None
        and {
            FlowKind.TIER: name in {str(q) for q in Queue},
            FlowKind.TASK: name in state.catalog,
            FlowKind.TENANT: bool(_TENANT.match(name)) or name == SYSTEM_TENANT,
        }[target]
    )
    if target is None or not known:
        raise ProblemError(404, "Nothing to pause", f"There is no {kind} {name!r} to pause.",
                           slug="unknown-pause-target")  # fmt: skip
    return target
