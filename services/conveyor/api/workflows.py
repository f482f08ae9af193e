"""/v1/workflows: submit a workflow (a DAG, a chain or a chord of catalogued tasks), read it
with its steps, list, cancel, and follow its events (SSE).
"""

import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from conveyor.api.auth import Reader, Writer, rate_limit_headers, require, tenant_limits
from conveyor.api.deps import JSON_BODY, PROBLEM_RESPONSES, ApiState, State
from conveyor.api.events import BLOCK_SECONDS, last_event_id_header, lost_events, stream_slot
from conveyor.api.jobs import revoke
from conveyor.api.pages import Cursor, Limit, invalid_cursor
from conveyor.api.problems import ProblemError
from conveyor.api.submitting import idempotency_key
from conveyor.core.apikeys import TENANT_PATTERN, Principal, Scope, TenantLimits
from conveyor.core.queues import Queue
from conveyor.core.workflow_plan import InvalidWorkflowError, WorkflowRequest, plan_of
from conveyor.jobstore.results import AcceptVerdict, InvalidCursorError, Limits
from conveyor.jobstore.workflow_model import Workflow, WorkflowState, WorkflowSummary
from conveyor.jobstore.workflow_store import WorkflowAcceptResult
from conveyor.telemetry.tracing import producer_span

Submitter = Annotated[Principal, Depends(require(Scope.JOBS_WRITE))]
_WORKFLOW_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class WorkflowPage(BaseModel):
    """A page of workflows, newest first (their counts; a workflow's resource has steps)."""

    items: list[WorkflowSummary]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


def workflows_router() -> APIRouter:
    """The /v1/workflows routes."""
    router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

    @router.post(
        "",
        status_code=202,
        response_model=Workflow,
        summary="Submit a workflow",
        operation_id="submit_workflow",
        response_description="Accepted: every step recorded, the roots queued",
        responses={200: {"model": Workflow, "description": "Replay of an idempotent submission"}},
        dependencies=[JSON_BODY],
    )
    async def submit_workflow(
        body: WorkflowRequest,
        http_request: Request,
        state: State,
        principal: Submitter,
        idempotency_key_header: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=200)
        ] = None,
    ) -> Response:
        """Validate every step (its task, arguments, parents and inputs; no cycle; at most
        `WORKFLOWS__MAX_STEPS` steps), then accept the whole workflow atomically: 202 means
        every step is recorded and the steps without parents are queued; nothing is ever
        half-accepted. Each step takes one of the tenant's rate-limit tokens. 200 replays an
        idempotent submission, 409 a key reused with another body, 429 past the tenant's rate
        limit or quota, 503 when a tier is full.
        """
        key = idempotency_key(body.idempotency_key, idempotency_key_header)
        try:
            plan = plan_of(body, state.catalog, state.settings, principal.tenant, key)
        except InvalidWorkflowError as exc:
            errors = [{"pointer": p, "detail": d} for p, d in exc.errors]
            raise ProblemError(422, "Invalid workflow", exc.detail, slug="validation-error",
                               errors=errors) from None  # fmt: skip
        tenant = tenant_limits(http_request, principal.tenant)
        limits = workflow_limits(tenant)
        depths = {str(q): state.settings.limits.max_queue_depth.for_queue(q) for q in Queue}
        with producer_span(state.traced, "conveyor.enqueue_workflow") as span:
            span.set_attribute("conveyor.workflow_steps", len(plan.steps))
            http_request.state.charged = True  # the accept script takes the tokens
            outcome = await state.store.submit_workflow(plan, limits, depths)
            span.set_attribute("conveyor.workflow_id", outcome.workflow_id)
        return await workflow_answer(state, outcome, tenant, len(plan.steps))

    @router.get("", response_model=WorkflowPage, summary="List workflows",
                operation_id="list_workflows")  # fmt: skip
    async def list_workflows(
        state: State,
        principal: Reader,
        response: Response,
        workflow_state: Annotated[WorkflowState | None, Query(alias="state")] = None,
        tenant: Annotated[
            str | None,
            Query(pattern=TENANT_PATTERN, description="Another tenant's workflows (admin only)."),
        ] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> WorkflowPage:
        """The caller's workflows, newest first; an admin key lists every tenant's, or one
        tenant's with `tenant`. Follow `next_cursor` for the next page.
        """
        if principal.can(Scope.ADMIN):
            scope = tenant
        elif tenant is not None and tenant != principal.tenant:
            raise ProblemError(403, "Forbidden",
                               "Listing another tenant's workflows needs the admin scope.",
                               slug="forbidden")  # fmt: skip
        else:
            scope = principal.tenant
        try:
            page = await state.store.list_workflows(
                tenant=scope, state=workflow_state, limit=limit, cursor=cursor
            )
        except InvalidCursorError:
            raise invalid_cursor() from None
        return WorkflowPage(items=page.workflows, next_cursor=page.next_cursor)

    @router.get("/{workflow_id}", response_model=Workflow, summary="Get a workflow",
                operation_id="get_workflow")  # fmt: skip
    async def get_workflow(workflow_id: str, state: State, principal: Reader) -> Workflow:
        """The workflow and every step: its state, progress, result or error."""
        return await existing_workflow(state, workflow_id, principal)

    @router.post("/{workflow_id}/cancel", response_model=Workflow, summary="Cancel a workflow",
                 operation_id="cancel_workflow")  # fmt: skip
    async def cancel_workflow(
        workflow_id: str,
        state: State,
        principal: Writer,
        terminate: Annotated[bool, Query()] = False,
    ) -> Workflow:
        """Cancel every step that has not finished: queued and waiting steps never run;
        running ones stop at their next progress report, or at once with `terminate=true`.
        Cancelling a cancelled workflow is a no-op; a finished one is a 409.
        """
        await existing_workflow(state, workflow_id, principal)
        outcome = await state.store.cancel_workflow(workflow_id, _tenant_of(principal))
        previous = outcome.previous_state
        if previous not in (WorkflowState.RUNNING, WorkflowState.CANCELLED):
            raise ProblemError(409, "Workflow already finished",
                               f"Workflow {workflow_id} {previous}; it cannot be cancelled.",
                               slug="workflow-finished")  # fmt: skip
        for job_id in outcome.running_steps:
            await run_in_threadpool(revoke, state, job_id, terminate)
        if outcome.ended is not None:
            state.metrics.workflows.workflow_ended(str(outcome.ended.outcome),
                                                   outcome.ended.seconds)  # fmt: skip
        return await existing_workflow(state, workflow_id, principal)

    @router.post("/{workflow_id}/steps/{step}/rerun", response_model=Workflow,
                 summary="Rerun a failed step", operation_id="rerun_workflow_step")  # fmt: skip
    async def rerun_step(workflow_id: str, step: str, state: State, principal: Writer) -> Workflow:
        """Run a failed or dead-lettered step again, as a new attempt of the same job: the
        workflow resumes from it (the steps its failure skipped wait for it again; an ended
        workflow runs again). A step that has not failed is a 409; so is a step of a cancelled
        workflow.
        """
        workflow = await existing_workflow(state, workflow_id, principal)
        found = next((s for s in workflow.steps if s.name == step), None)
        if found is None:
            raise ProblemError(404, "Step not found", f"Workflow {workflow_id} has no step "
                               f"{step!r}.", slug="step-not-found")  # fmt: skip
        outcome = await state.store.rerun_step(workflow_id, found.job_id, _tenant_of(principal))
        if not outcome.queued:
            reasons = {"cancelled": "its workflow was cancelled", "unknown": "it is gone"}
            why = reasons.get(outcome.refusal, f"it is {outcome.refusal}")
            raise ProblemError(409, "Step cannot be rerun",
                               f"Step {step!r} cannot be rerun: {why}.",
                               slug="step-not-rerunnable")  # fmt: skip
        return await existing_workflow(state, workflow_id, principal)

    @router.get(
        "/{workflow_id}/events",
        response_class=EventSourceResponse,
        summary="Follow a workflow's events (SSE)",
        responses=PROBLEM_RESPONSES,
    )
    async def workflow_events(
        workflow: Annotated[Workflow, Depends(_followed_workflow)],
        state: State,
        last_event_id: Annotated[str | None, Depends(last_event_id_header)],
    ) -> AsyncIterator[ServerSentEvent]:
        """Stream the workflow's changes until it ends: first the workflow itself
        (`workflow`), then each step's changes (`step`: `{step, job_id, state, attempts,
        progress}`; `progress` for a progress report), then the final `workflow`. Reconnect
        with `Last-Event-ID` to resume.
        """
        async for event in follow_workflow(state, workflow.id, last_event_id):
            yield event

    return router


async def existing_workflow(state: ApiState, workflow_id: str, principal: Principal) -> Workflow:
    """The workflow, or a 404 (also for another tenant's)."""
    found = None
    if _WORKFLOW_ID.match(workflow_id):
        found = await state.store.get_workflow(workflow_id, _tenant_of(principal))
    if found is None:
        raise ProblemError(404, "Workflow not found", f"No workflow {workflow_id!r}.",
                           slug="workflow-not-found")  # fmt: skip
    return found


def _tenant_of(principal: Principal) -> str | None:
    return None if principal.can(Scope.ADMIN) else principal.tenant


async def _followed_workflow(
    workflow_id: str, state: State, principal: Reader
) -> AsyncIterator[Workflow]:
    workflow = await existing_workflow(state, workflow_id, principal)
    async with stream_slot(state, principal.tenant):
        yield workflow


def workflow_limits(tenant: TenantLimits) -> Limits:
    """What the workflow accept script enforces for a tenant."""
    return Limits(
        rate_per_second=tenant.rate_per_second,
        burst=tenant.burst,
        weight=tenant.weight,
        concurrency_per_tier=tenant.concurrency_per_tier,
        max_queued_per_tier=tenant.max_queued_per_tier,
        max_bytes=tenant.max_bytes,
    )


async def workflow_answer(
    state: ApiState, outcome: WorkflowAcceptResult, tenant: TenantLimits, steps: int
) -> Response:
    """The answer to a workflow submission (or the problem it raises), counted."""
    count = state.metrics.workflow_submissions.labels
    location = {"Location": f"/v1/workflows/{outcome.workflow_id}"}
    verdict = outcome.verdict
    retry_after = str(state.settings.limits.backpressure_retry_after_seconds)
    if verdict is AcceptVerdict.CREATED and outcome.workflow is not None:
        count("accepted").inc()
        headers = {**location, **rate_limit_headers(tenant, outcome.tokens_left)}
        return _json(outcome.workflow, 202, headers)
    if verdict is AcceptVerdict.EXISTING:
        existing = await state.store.get_workflow(outcome.workflow_id)
        if existing is None:
            raise ProblemError(409, "Idempotency key refers to an expired workflow",
                               slug="expired")  # fmt: skip
        count("duplicate").inc()
        return _json(existing, 200, location)
    if verdict is AcceptVerdict.RATE_LIMITED and outcome.over_burst:
        count("rejected").inc()
        raise ProblemError(
            422, "Workflow too large for the rate limit",
            f"The workflow has {steps} steps and each takes a rate-limit token, but this "
            f"tenant's burst is {tenant.burst}: it could never be accepted. Split it, or ask "
            "for a larger burst.", slug="workflow-over-burst",
        )  # fmt: skip
    if verdict is AcceptVerdict.RATE_LIMITED:
        count("rate_limited").inc()
        wait = max(1, -(-outcome.retry_after_ms // 1000))
        raise ProblemError(429, "Too many requests",
                           f"This tenant's rate limit needs {steps} tokens for this workflow; "
                           f"retry in {wait} s.", slug="rate-limited",
                           headers={"Retry-After": str(wait)})  # fmt: skip
    if verdict is AcceptVerdict.QUEUE_FULL:
        count("queue_full").inc()
        raise ProblemError(503, "Queue full",
                           f"The {outcome.queue} queue is full; nothing was accepted. Retry later.",
                           slug="queue-full", headers={"Retry-After": retry_after})  # fmt: skip
    if verdict is AcceptVerdict.QUOTA_EXCEEDED and outcome.quota is not None:
        count("quota_exceeded").inc()
        raise ProblemError(429, "Quota exceeded",
                           f"This tenant's {outcome.quota.name} quota ({outcome.quota.limit}) "
                           "would be exceeded; nothing was accepted. Retry later.",
                           slug="quota-exceeded", headers={"Retry-After": retry_after})  # fmt: skip
    if verdict is AcceptVerdict.NOT_REPLICATED:
        count("broker_error").inc()
        raise ProblemError(
            503, "Not replicated",
            f"Workflow {outcome.workflow_id} is recorded on the primary but only "
            f"{outcome.replicas} replica(s) confirmed it in time. Retry with the same "
            "idempotency key: a retry never duplicates it.", slug="not-replicated",
            headers={"Retry-After": str(state.settings.redis_replication.retry_after_seconds)},
        )  # fmt: skip
    count("conflict").inc()
    raise ProblemError(409, "Idempotency key reused",
                       f"The idempotency key was used for a different workflow "
                       f"({outcome.workflow_id}).", slug="idempotency-conflict")  # fmt: skip


def _json(workflow: Workflow, status: int, headers: dict[str, str]) -> Response:
    return Response(workflow.model_dump_json(), status, headers, media_type="application/json")


async def follow_workflow(
    state: ApiState, workflow_id: str, last_event_id: str | None
) -> AsyncIterator[ServerSentEvent]:
    """The events of `workflow_id` after `last_event_id` (a snapshot first when there is
    none, or when the stream no longer holds the events after it).
    """
    client = state.streams
    key = state.store.keys.workflow_events(workflow_id)
    deadline = time.monotonic() + state.settings.api.events_max_seconds
    cursor = last_event_id
    if cursor is not None and not await lost_events(client, key, cursor):
        # Resuming a workflow that ended with nothing left to send: end with it at once.
        done = await state.store.get_workflow(workflow_id)
        if (done is not None and done.state is not WorkflowState.RUNNING
                and not await client.xrange(key, min=f"({cursor}", count=1)):  # fmt: skip
            yield ServerSentEvent(event="workflow", id=cursor, data=done.model_dump(mode="json"))
            return
    else:
        # The stream's position first, then the workflow: a change between the two is sent
        # again as an event (harmless), never lost.
        last: Any = await client.xrevrange(key, count=1)
        cursor = last[0][0] if last else "0-0"
        snapshot = await state.store.get_workflow(workflow_id)
        if snapshot is None:
            return
        yield ServerSentEvent(event="workflow", id=cursor, data=snapshot.model_dump(mode="json"))
        if snapshot.state is not WorkflowState.RUNNING:
            return
    while time.monotonic() < deadline:
        block_ms = int(min(BLOCK_SECONDS, max(0.01, deadline - time.monotonic())) * 1000)
        reply: Any = await client.xread({key: cursor}, block=block_ms, count=100)
        if not reply:
            if not await client.exists(state.store.keys.workflow(workflow_id)):
                return
            continue
        for entry_id, fields in reply[0][1]:
            cursor = entry_id
            if fields.get("kind") == "workflow":
                final = await state.store.get_workflow(workflow_id)
                if final is not None:
                    yield ServerSentEvent(event="workflow", id=entry_id,
                                          data=final.model_dump(mode="json"))  # fmt: skip
                return
            progress = fields.get("progress")
            change = {
                "step": fields.get("step", ""),
                "job_id": fields.get("job", ""),
                "state": fields["state"],
                "attempts": int(fields.get("attempts") or 0),
                "progress": orjson.loads(progress) if progress else None,
            }
            kind = "progress" if fields.get("kind") == "progress" else "step"
            yield ServerSentEvent(event=kind, id=entry_id, data=change)
