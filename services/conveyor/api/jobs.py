"""/v1/jobs: submit, read, list and cancel jobs."""

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from conveyor.api.auth import Reader, Writer, require, tenant_limits
from conveyor.api.deps import JSON_BODY, ApiState, State, existing_job
from conveyor.api.direct_route import direct_route, submission_handler
from conveyor.api.pages import (
    Cursor,
    Limit,
    ListingFields,
    invalid_cursor,
    listing_fields,
    page_response,
)
from conveyor.api.problems import ProblemError
from conveyor.api.schemas import JobPage, SubmissionBase
from conveyor.api.state import state_of
from conveyor.api.submitting import accept_limits, answer, idempotency_key, submission_of
from conveyor.core.apikeys import TENANT_PATTERN, Principal, Scope
from conveyor.core.bounds import IDEMPOTENCY_KEY_PATTERN
from conveyor.core.callbacks import callback_submission
from conveyor.core.queues import Queue
from conveyor.jobstore.listing import ListedJob
from conveyor.jobstore.model import Job, JobState, JobSummary
from conveyor.jobstore.results import InvalidCursorError, Page
from conveyor.telemetry.tracing import producer_span

Submitter = Annotated[Principal, Depends(require(Scope.JOBS_WRITE))]
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200
# An ISO 8601 date and time, with an optional offset (`Z` or ±hh:mm).
ISO_INSTANT = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"


def add_submit_route(router: APIRouter, submission_body: Any, *, direct: bool = True) -> None:
    """POST /v1/jobs, added to `router` itself (the app's own, before any included router):
    FastAPI matches an included router's routes twice per request (to pick the router, then
    the route), after the included routers before it; at the top the hot path is the second
    route tried (7 % of its instructions, bench/README.md round 10). `submission_body`
    is the per-deployment request model. `direct=False` leaves reading submissions to FastAPI
    (the reference the direct handler is tested against).
    """

    async def accept_submission(
        http_request: Request, principal: Principal, body: Any, header_key: str | None
    ) -> Response:
        """Record and enqueue the validated submission `body` for `principal`."""
        state = state_of(http_request)
        request: SubmissionBase = body
        key = idempotency_key(request.idempotency_key, header_key)
        spec, submission = submission_of(state, request, principal.tenant, key)
        tenant = tenant_limits(http_request, principal.tenant)
        with producer_span(state.traced, "conveyor.enqueue") as span:
            span.set_attribute("conveyor.task", spec.name)
            span.set_attribute("conveyor.queue", str(submission.queue))
            started = time.perf_counter()
            http_request.state.charged = True  # the accept script takes the token
            outcome = await state.store.submit(
                spec, submission, accept_limits(state, tenant, submission)
            )
            state.metrics.accept_latency.observe(time.perf_counter() - started)
            span.set_attribute("conveyor.job_id", outcome.job_id)
        result = await answer(state, outcome, submission, tenant)
        if result.problem is not None:
            raise result.problem
        assert result.job is not None  # an answer is a job or a problem
        return job_response(result.job, result.status, result.headers)

    async def submit_job(
        body: submission_body,
        http_request: Request,
        principal: Submitter,
        idempotency_key_header: Annotated[
            str | None, Header(alias=IDEMPOTENCY_HEADER, max_length=MAX_IDEMPOTENCY_KEY)
        ] = None,
    ) -> Response:
        """Validate the arguments against the task's model, then record and enqueue the job
        atomically. Answers 202 for a new job, 200 for a replay of the same idempotent request,
        409 when the idempotency key was used with a different body, 429 past the tenant's rate
        limit and 503 when the job's queue is full (both with Retry-After).
        """
        return await accept_submission(http_request, principal, body, idempotency_key_header)

    # FastAPI documents the route from submit_job's signature; with `direct` (always, but in
    # the test comparing both) its requests are read by hand (api/direct_route.py).
    handler = submission_handler(
        submission_body, IDEMPOTENCY_HEADER, MAX_IDEMPOTENCY_KEY, Scope.JOBS_WRITE,
        accept_submission,
    )  # fmt: skip
    router.add_api_route(
        "/v1/jobs",
        submit_job,
        tags=["jobs"],
        methods=["POST"],
        status_code=202,
        response_model=Job,
        summary="Submit a job",
        operation_id="submit_job",
        response_description="Accepted: the job as recorded (its URL in `Location`)",
        responses={200: {"model": Job, "description": "Replay of an idempotent submission"}},
        dependencies=[JSON_BODY],
        route_class_override=direct_route(handler) if direct else None,
    )


def jobs_router() -> APIRouter:
    """The /v1/jobs routes but submitting (`add_submit_route`). Their problem responses are
    documented by `problems.document_problems`.
    """
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.get("", response_model=JobPage, summary="List jobs", operation_id="list_jobs")
    async def list_jobs(
        state: State,
        principal: Reader,
        response: Response,
        job_state: Annotated[JobState | None, Query(alias="state")] = None,
        task: Annotated[str | None, Query(max_length=200, pattern=r"^[\w.:-]+$")] = None,
        queue: Queue | None = None,
        tenant: Annotated[
            str | None,
            Query(pattern=TENANT_PATTERN, description="Another tenant's jobs (admin only)."),
        ] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
        fields: ListingFields = None,
        since: Annotated[
            str | None,
            Query(
                pattern=ISO_INSTANT, max_length=40, description="Created at or after (ISO 8601)."
            ),
        ] = None,
        until: Annotated[
            str | None,
            Query(
                pattern=ISO_INSTANT, max_length=40, description="Created at or before (ISO 8601)."
            ),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Query(
                max_length=200,
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="The job submitted with this idempotency key (0 or 1 item).",
            ),
        ] = None,
    ) -> Response:
        """The caller's jobs, newest first, optionally filtered; follow `next_cursor` for the
        next page. An admin key lists every tenant's jobs, or one tenant's with `tenant`.
        An unknown `task` is a 422 naming the valid ones. `since` and `until` bound the
        creation time; `idempotency_key` finds the one job submitted with that key (the
        caller's tenant's, or `tenant`'s for an admin).
        """
        if task is not None and task not in state.catalog:
            names = list(state.catalog)
            raise ProblemError(
                422,
                "Unknown task",
                f"No task {task!r}; the tasks are: {', '.join(names)}.",
                slug="unknown-task",
                valid_tasks=names,
                errors=[{"pointer": "#/query/task", "detail": f"Unknown task {task!r}"}],
            )
        if principal.can(Scope.ADMIN):
            scope_tenant = tenant
        elif tenant is not None and tenant != principal.tenant:
            raise ProblemError(
                403,
                "Forbidden",
                "Listing another tenant's jobs needs the admin scope.",
                slug="forbidden",
            )
        else:
            scope_tenant = principal.tenant
        if idempotency_key is not None:
            return await _by_idempotency_key(state, principal, scope_tenant, idempotency_key,
                                             response)  # fmt: skip
        try:
            page = await state.store.list_jobs(
                tenant=scope_tenant,
                state=job_state,
                task=task,
                queue=queue,
                limit=limit,
                cursor=cursor,
                fields=listing_fields(fields),
                max_bytes=state.settings.api.listing_max_bytes,
                since=_instant("since", since),
                until=_instant("until", until),
            )
        except InvalidCursorError:
            raise invalid_cursor() from None
        return page_response(page, response)

    @router.get("/{job_id}", response_model=Job, summary="Get a job", operation_id="get_job")
    async def get_job(job_id: str, state: State, principal: Reader) -> Job:
        """The job's state, progress, result or error, attempts and timestamps."""
        return await existing_job(state, job_id, principal)

    @router.post(
        "/{job_id}/cancel", response_model=Job, summary="Cancel a job", operation_id="cancel_job"
    )
    async def cancel_job(
        job_id: str,
        state: State,
        principal: Writer,
        terminate: Annotated[bool, Query()] = False,
    ) -> Job:
        """Cancel a job that has not finished. A queued or scheduled job never runs; a running
        job stops at its next progress report, or at once with `terminate=true` (its process
        is killed). Cancelling a cancelled job is a no-op; a finished one is a 409.
        """
        await existing_job(state, job_id, principal)
        outcome = await state.store.cancel(job_id)
        if not outcome.applied and outcome.previous_state is not JobState.CANCELLED:
            raise ProblemError(
                409,
                "Job already finished",
                f"Job {job_id} is {outcome.previous_state}; it cannot be cancelled.",
                slug="job-finished",
            )
        if outcome.applied and outcome.previous_state is JobState.RUNNING:
            await run_in_threadpool(revoke, state, job_id, terminate)
        if outcome.workflow_ended is not None:  # the last open step of its workflow
            ended = outcome.workflow_ended
            state.metrics.workflows.workflow_ended(str(ended.outcome), ended.seconds)
        job = await existing_job(state, job_id, principal)
        if outcome.callback_pending:
            await _enqueue_callback(state, job)
        return job

    @router.post(
        "/{job_id}/retry", response_model=Job, summary="Retry a failed job",
        operation_id="retry_job",
    )  # fmt: skip
    async def retry_job(job_id: str, state: State, principal: Writer) -> Job:
        """Run a failed job again, as a new attempt of the same job (its dead letter is
        replayed; a workflow step resumes its workflow). 409 unless the job failed and its
        dead letter is still kept.
        """
        job = await existing_job(state, job_id, principal)
        if job.state is not JobState.FAILED or not await state.store.replay([job_id]):
            raise ProblemError(409, "Job cannot be retried",
                               f"Job {job_id} is {job.state}: only a failed job whose dead "
                               "letter is kept can be retried.", slug="job-not-failed")  # fmt: skip
        return await existing_job(state, job_id, principal)

    return router


def _instant(name: str, text: str | None) -> float | None:
    """An ISO 8601 instant as epoch seconds (UTC when it names no offset); 422 if invalid."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ProblemError(422, "Invalid request", f"{name} is not a valid time.",
                           slug="validation-error",
                           errors=[{"pointer": f"#/query/{name}",
                                    "detail": "an ISO 8601 date and time"}]) from None  # fmt: skip
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


async def _by_idempotency_key(state: ApiState, principal: Principal, tenant: str | None,
                              key: str, response: Response) -> Response:  # fmt: skip
    """The page of the one job `tenant` submitted with idempotency `key` (or none)."""
    found = await state.store.job_of_idempotency_key(tenant or principal.tenant, key)
    job = await state.store.get(found, tenant) if found else None
    if job is None:
        return page_response(Page([], None), response)
    summary = job.model_dump(include=set(JobSummary.model_fields))
    return page_response(Page([ListedJob.model_validate(summary)], None), response)


def job_response(job: Job, status: int, headers: dict[str, str]) -> Response:
    """The job as JSON, serialized once (FastAPI would validate the model again first)."""
    return Response(job.model_dump_json(), status, headers, media_type="application/json")


def revoke(state: ApiState, job_id: str, terminate: bool) -> None:
    """Stop a running job's attempt (killed with `terminate`), through Celery's control."""
    # Imported here: only cancelling a running job needs a Celery client in the API process.
    from conveyor.celery_config import control_app

    app = control_app(state.settings)
    with app.connection_for_write() as connection:
        app.control.revoke(job_id, terminate=terminate, signal="SIGTERM", connection=connection)


async def _enqueue_callback(state: ApiState, job: Job) -> None:
    """Enqueue the callback of a job the API finished (cancelled). Marked pending in the same
    step as the cancel: if this fails, the beat leader's sweep enqueues it.
    """
    callback = callback_submission(job, state.catalog)
    if callback is not None:
        await state.store.submit(*callback)
    await state.store.callback_enqueued(job.id)
