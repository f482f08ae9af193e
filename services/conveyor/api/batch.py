"""POST /v1/jobs/batch: many submissions in one request, each validated, accepted and answered
on its own (all-or-nothing per job, never per batch), accepted in one Redis round trip.
"""

import time
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from conveyor.api.auth import require, tenant_limits
from conveyor.api.deps import JSON_BODY, State
from conveyor.api.problems import Problem, ProblemError, field_errors
from conveyor.api.submitting import (
    Answer,
    accept_limits,
    idempotency_key,
    judged,
    submission_of,
)
from conveyor.core.apikeys import Principal, Scope
from conveyor.core.catalog import TaskCatalog, TaskSpec
from conveyor.core.queues import Queue
from conveyor.jobstore.model import Job
from conveyor.jobstore.results import Limits
from conveyor.jobstore.submission import Submission
from conveyor.telemetry.tracing import producer_span

Submitter = Annotated[Principal, Depends(require(Scope.JOBS_WRITE))]


class BatchItem(BaseModel):
    """One submission's answer, at its index in the request: the job (202 new, 200 replay of
    its idempotency key) or a problem (422, 409, 429, 503), with the headers a single
    submission would have had (Location, Retry-After).
    """

    status: int
    job: Job | None = None
    problem: Problem | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class BatchResult(BaseModel):
    """Every submission's answer, in the request's order."""

    items: list[BatchItem]
    accepted: int = Field(..., description="How many jobs are new (202) in this batch.")


def batch_router(catalog: TaskCatalog, submission_body: Any, max_jobs: int) -> APIRouter:
    """The batch route; `submission_body` is the per-deployment submission model."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    item_model: TypeAdapter[Any] = TypeAdapter(submission_body)
    task_names = list(catalog)

    class BatchRequest(BaseModel):
        """Up to `max_jobs` submissions, each as POST /v1/jobs takes it (idempotency keys in
        the body: `idempotency_key`).
        """

        model_config = ConfigDict(extra="forbid")

        jobs: list[dict[str, Any]] = Field(..., min_length=1, max_length=max_jobs)

    @router.post(
        "/batch",
        response_model=BatchResult,
        summary="Submit many jobs",
        operation_id="submit_jobs",
        dependencies=[JSON_BODY],
    )
    async def submit_jobs(
        body: BatchRequest, http_request: Request, state: State, principal: Submitter
    ) -> Response:
        """Validate each submission against its task's model and accept the valid ones, each
        atomically and within the tenant's limits, in one round trip to Redis. The answer
        lists each submission's own status: 202 with its job, 200 for a replay of its
        idempotency key, or a problem (422 with pointers under `#/jobs/<index>`, 409, 429,
        503). A batch is never half-accepted per job; it may be partly accepted as a whole.
        """
        answers: list[Answer | None] = [None] * len(body.jobs)
        pending: list[tuple[int, TaskSpec, Submission, Limits]] = []
        tenant = tenant_limits(http_request, principal.tenant)
        # One Limits per tier for the whole batch: the accept calls' shared head is built
        # once for the jobs that share the object.
        tier_limits: dict[Queue, Limits] = {}
        for index, raw in enumerate(body.jobs):
            try:
                request = item_model.validate_python(raw)
                key = idempotency_key(request.idempotency_key, None)
                spec, submission = submission_of(state, request, principal.tenant, key)
            except ValidationError as exc:
                answers[index] = _invalid(index, field_errors(exc.errors(), task_names))
                continue
            except ProblemError as exc:
                answers[index] = _invalid(index, exc.problem.errors or [], exc.problem.detail)
                continue
            limits = tier_limits.get(submission.queue)
            if limits is None:
                limits = tier_limits[submission.queue] = accept_limits(state, tenant, submission)
            pending.append((index, spec, submission, limits))
        state.metrics.submitted["rejected"].inc(len(body.jobs) - len(pending))
        counted: Counter[str] = Counter()
        if pending:
            with producer_span(state.traced, "conveyor.enqueue_batch"):
                started = time.perf_counter()
                http_request.state.charged = True  # each accept script takes a token
                outcomes = await state.store.submit_many([p[1:] for p in pending])
                state.metrics.accept_latency.observe(time.perf_counter() - started)
            try:
                for (index, _, submission, _), outcome in zip(pending, outcomes, strict=True):
                    counted_as, answers[index] = await judged(state, outcome, submission, tenant)
                    counted[counted_as] += 1
            finally:  # what was judged counts even if a later answer fails (jobs are written)
                for counted_as, how_many in counted.items():  # once per outcome, not per job
                    state.metrics.submitted[counted_as].inc(how_many)
        items = [_item(a) for a in answers if a is not None]
        result = BatchResult(items=items, accepted=sum(1 for a in items if a.status == 202))
        # Serialized once, in pydantic's core (FastAPI would validate the model again, then
        # encode it with the standard library's json), as the single route answers.
        return Response(result.model_dump_json(), media_type="application/json")

    return router


def _invalid(index: int, errors: list[Any], detail: str | None = None) -> Answer:
    prefixed = [
        {"pointer": f"#/jobs/{index}" + _field(e, "pointer").removeprefix("#"),
         "detail": _field(e, "detail")}
        for e in errors
    ]  # fmt: skip
    problem = ProblemError(
        422,
        "Invalid request",
        detail or "The submission does not match the schema; see errors.",
        slug="validation-error",
        errors=prefixed,
    )
    return Answer(422, problem=problem)


def _field(error: Any, name: str) -> str:
    return str(error[name] if isinstance(error, dict) else getattr(error, name))


def _item(result: Answer) -> BatchItem:
    problem = result.problem
    if problem is None:
        return BatchItem(status=result.status, job=result.job, headers=result.headers)
    return BatchItem(
        status=result.status, problem=problem.problem, headers=dict(problem.headers or {})
    )
