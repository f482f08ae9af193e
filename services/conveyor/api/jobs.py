"""/v1/jobs: submit, read, list and cancel jobs."""

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from opentelemetry.trace import SpanKind

from conveyor.api.problems import Problem, ProblemError
from conveyor.api.schemas import IDEMPOTENCY_KEY_PATTERN, JobPage, SubmissionBase
from conveyor.api.state import ApiState, api_state
from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import TaskCatalog
from conveyor.core.jobs import Job, JobState
from conveyor.core.queues import Queue
from conveyor.core.store import InvalidCursorError
from conveyor.core.submit import Submission, prepare
from conveyor.telemetry.metrics import ApiMetrics
from conveyor.telemetry.tracing import tracer

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (404, 409, 422, 503)
}

State = Annotated[ApiState, Depends(api_state)]


def jobs_router(catalog: TaskCatalog, submission_body: Any) -> APIRouter:
    """The /v1/jobs routes; `submission_body` is the per-deployment request model."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=PROBLEM_RESPONSES)

    @router.post(
        "",
        status_code=202,
        response_model=Job,
        summary="Submit a job",
        responses={200: {"model": Job, "description": "Replay of an idempotent submission"}},
    )
    async def submit_job(
        body: submission_body,
        response: Response,
        http_request: Request,
        state: State,
        idempotency_key_header: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Job:
        """Validate the arguments against the task's model, then record and enqueue the job
        atomically. Answers 202 for a new job, 200 for a replay of the same idempotent request
        and 409 when the idempotency key was used with a different body.
        """
        request: SubmissionBase = body
        key = _idempotency_key(request.idempotency_key, idempotency_key_header)
        task: str = getattr(request, "task")  # noqa: B009 - set by every union variant
        spec = state.catalog[task]
        submission = Submission(
            task=task,
            args=getattr(request, "args").model_dump(mode="json"),  # noqa: B009
            queue=request.priority or spec.queue,
            max_retries=(
                request.max_retries if request.max_retries is not None else spec.retry.max_retries
            ),
            timeout_seconds=request.timeout_seconds,
            delay_seconds=request.delay_seconds,
            idempotency_key=key,
            callback_url=str(request.callback_url) if request.callback_url else None,
        )
        metrics: ApiMetrics = http_request.app.state.metrics
        with tracer().start_as_current_span("conveyor.enqueue", kind=SpanKind.PRODUCER) as span:
            span.set_attribute("conveyor.task", task)
            span.set_attribute("conveyor.queue", str(submission.queue))
            new_job, message = prepare(spec, submission, state.settings)
            started = time.perf_counter()
            outcome = await state.store.accept(new_job, message)
            metrics.accept_latency.observe(time.perf_counter() - started)
            span.set_attribute("conveyor.job_id", outcome.job_id)
        response.headers["Location"] = f"/v1/jobs/{outcome.job_id}"
        if outcome.created:
            metrics.submissions.labels("accepted").inc()
            return Job.from_record(dict(zip(*[iter(new_job.record_fields())] * 2, strict=True)))
        if outcome.request_hash != new_job.request_hash:
            metrics.submissions.labels("conflict").inc()
            raise ProblemError(
                409,
                "Idempotency key reused",
                f"Idempotency key {key!r} was used for a different request (job {outcome.job_id}).",
                slug="idempotency-conflict",
            )
        existing = await state.store.get(outcome.job_id)
        if existing is None:
            raise ProblemError(409, "Idempotency key refers to an expired job", slug="expired")
        metrics.submissions.labels("duplicate").inc()
        response.status_code = 200
        return existing

    @router.get("", response_model=JobPage, summary="List jobs")
    async def list_jobs(
        state: State,
        job_state: Annotated[JobState | None, Query(alias="state")] = None,
        task: Annotated[str | None, Query(max_length=200)] = None,
        queue: Queue | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=300)] = None,
    ) -> JobPage:
        """Jobs newest first, optionally filtered; follow `next_cursor` for the next page."""
        try:
            page = await state.store.list_jobs(
                state=job_state, task=task, queue=queue, limit=limit, cursor=cursor
            )
        except InvalidCursorError:
            raise ProblemError(422, "Invalid cursor", slug="invalid-cursor") from None
        return JobPage(items=page.jobs, next_cursor=page.next_cursor)

    @router.get("/{job_id}", response_model=Job, summary="Get a job")
    async def get_job(job_id: str, state: State) -> Job:
        """The job's state, progress, result or error, attempts and timestamps."""
        return await existing_job(state, job_id)

    @router.post("/{job_id}/cancel", response_model=Job, summary="Cancel a job")
    async def cancel_job(
        job_id: str, state: State, terminate: Annotated[bool, Query()] = False
    ) -> Job:
        """Cancel a job that has not finished. A queued or scheduled job never runs; a running
        job stops at its next progress report, or at once with `terminate=true` (its process
        is killed). Cancelling a cancelled job is a no-op; a finished one is a 409.
        """
        await existing_job(state, job_id)
        outcome = await state.store.cancel(job_id, time.time())
        if not outcome.applied and outcome.previous_state is not JobState.CANCELLED:
            raise ProblemError(
                409,
                "Job already finished",
                f"Job {job_id} is {outcome.previous_state}; it cannot be cancelled.",
                slug="job-finished",
            )
        if outcome.applied and outcome.previous_state is JobState.RUNNING:
            await run_in_threadpool(_revoke, state, job_id, terminate)
        job = await existing_job(state, job_id)
        if outcome.applied:
            await _enqueue_callback(state, job)
        return job

    return router


async def existing_job(state: ApiState, job_id: str) -> Job:
    """The job, or a 404 problem."""
    job = await state.store.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise ProblemError(404, "Job not found", f"No job {job_id!r}.", slug="job-not-found")
    return job


def _idempotency_key(from_body: str | None, from_header: str | None) -> str | None:
    if from_header is not None and not _IDEMPOTENCY_KEY.match(from_header):
        raise ProblemError(
            422,
            "Invalid request",
            "Idempotency-Key must be 1-200 printable ASCII characters.",
            slug="validation-error",
        )
    if from_body and from_header and from_body != from_header:
        raise ProblemError(
            422,
            "Invalid request",
            "The Idempotency-Key header and the idempotency_key field differ.",
            slug="validation-error",
        )
    return from_body or from_header


def _revoke(state: ApiState, job_id: str, terminate: bool) -> None:
    # Imported here: only cancelling a running job needs a Celery client in the API process.
    from conveyor.worker.app import control_app

    app = control_app(state.settings)
    with app.connection_for_write() as connection:
        app.control.revoke(job_id, terminate=terminate, signal="SIGTERM", connection=connection)


async def _enqueue_callback(state: ApiState, job: Job) -> None:
    submission = callback_submission(job, state.catalog)
    if submission is not None:
        new_job, message = prepare(state.catalog[submission.task], submission, state.settings)
        await state.store.accept(new_job, message)
