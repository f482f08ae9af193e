"""/v1/jobs: submit, read, list and cancel jobs."""

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from opentelemetry.trace import SpanKind
from pydantic import AnyUrl

from conveyor.api.auth import (
    Reader,
    Writer,
    rate_limit_headers,
    require,
    tenant_limits,
    too_many_requests,
)
from conveyor.api.deps import JSON_BODY, ApiState, State, existing_job
from conveyor.api.limits import check_args_shape
from conveyor.api.pages import (
    Cursor,
    Limit,
    ListingFields,
    invalid_cursor,
    listing_fields,
    page_response,
)
from conveyor.api.problems import ProblemError
from conveyor.api.schemas import IDEMPOTENCY_KEY_PATTERN, JobPage, SubmissionBase
from conveyor.core.apikeys import TENANT_PATTERN, Principal, Scope
from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import TaskCatalog
from conveyor.core.netguard import NetGuard, UnsafeUrlError
from conveyor.core.queues import Queue
from conveyor.jobstore.model import Job, JobState
from conveyor.jobstore.results import AcceptVerdict, InvalidCursorError, Limits
from conveyor.jobstore.submission import Submission
from conveyor.telemetry.tracing import tracer

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
Submitter = Annotated[Principal, Depends(require(Scope.JOBS_WRITE))]


def jobs_router(catalog: TaskCatalog, submission_body: Any) -> APIRouter:
    """The /v1/jobs routes; `submission_body` is the per-deployment request model. Their
    problem responses are documented by `problems.document_problems`.
    """
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.post(
        "",
        status_code=202,
        response_model=Job,
        summary="Submit a job",
        operation_id="submit_job",
        response_description="Accepted: the job as recorded (its URL in `Location`)",
        responses={200: {"model": Job, "description": "Replay of an idempotent submission"}},
        dependencies=[JSON_BODY],
    )
    async def submit_job(
        body: submission_body,
        http_request: Request,
        state: State,
        principal: Submitter,
        idempotency_key_header: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=200)
        ] = None,
    ) -> Response:
        """Validate the arguments against the task's model, then record and enqueue the job
        atomically. Answers 202 for a new job, 200 for a replay of the same idempotent request,
        409 when the idempotency key was used with a different body, 429 past the tenant's rate
        limit and 503 when the job's queue is full (both with Retry-After).
        """
        request: SubmissionBase = body
        key = _idempotency_key(request.idempotency_key, idempotency_key_header)
        task: str = getattr(request, "task")  # noqa: B009 - set by every union variant
        spec = state.catalog[task]
        args_model = getattr(request, "args")  # noqa: B009
        _check_urls(state, request, args_model)
        limits = state.settings.limits
        check_args_shape(args_model.model_dump(), limits.max_args_depth, limits.max_string_length)
        args = args_model.model_dump(mode="json")
        submission = Submission.of(
            spec,
            tenant=principal.tenant,
            args=args,
            priority=request.priority,
            max_retries=request.max_retries,
            timeout_seconds=request.timeout_seconds,
            delay_seconds=request.delay_seconds,
            idempotency_key=key,
            callback_url=str(request.callback_url) if request.callback_url else None,
        )
        metrics = state.metrics
        with tracer().start_as_current_span("conveyor.enqueue", kind=SpanKind.PRODUCER) as span:
            span.set_attribute("conveyor.task", task)
            span.set_attribute("conveyor.queue", str(submission.queue))
            tenant = tenant_limits(http_request, principal.tenant)
            accept_limits = Limits(
                rate_per_second=tenant.rate_per_second,
                burst=tenant.burst,
                max_queue_depth=limits.max_queue_depth.for_queue(submission.queue),
                max_delayed_jobs=limits.max_delayed_jobs,
            )
            started = time.perf_counter()
            http_request.state.charged = True  # the accept script takes the token
            outcome = await state.store.submit(spec, submission, accept_limits)
            metrics.accept_latency.observe(time.perf_counter() - started)
            span.set_attribute("conveyor.job_id", outcome.job_id)
        if outcome.verdict is AcceptVerdict.RATE_LIMITED:
            metrics.submissions.labels("rate_limited").inc()
            raise too_many_requests(tenant, outcome.retry_after_ms)
        if outcome.verdict is AcceptVerdict.QUEUE_FULL:
            metrics.submissions.labels("queue_full").inc()
            raise ProblemError(
                503,
                "Queue full",
                f"The {submission.queue} queue holds {outcome.depth} jobs, its limit; "
                "nothing was accepted. Retry later.",
                slug="queue-full",
                headers={"Retry-After": str(limits.backpressure_retry_after_seconds)},
            )
        if outcome.verdict is AcceptVerdict.NOT_REPLICATED:
            metrics.submissions.labels("broker_error").inc()  # a replication shortfall
            raise ProblemError(
                503,
                "Not replicated",
                f"Job {outcome.job_id} is recorded on the primary but only {outcome.replicas} "
                "replica(s) confirmed it in time, so it is not acknowledged. Retry with the same "
                "idempotency key: a retry never duplicates it.",
                slug="not-replicated",
                headers={"Retry-After": str(state.settings.redis_replication.retry_after_seconds)},
            )
        location = {"Location": f"/v1/jobs/{outcome.job_id}"}
        if outcome.job is not None:
            metrics.submissions.labels("accepted").inc()
            headers = {**location, **rate_limit_headers(tenant, outcome.tokens_left)}
            return job_response(outcome.job, 202, headers)
        if outcome.verdict is AcceptVerdict.CONFLICT:
            metrics.submissions.labels("conflict").inc()
            raise ProblemError(
                409,
                "Idempotency key reused",
                f"Idempotency key {key!r} was used for a different request (job {outcome.job_id}).",
                slug="idempotency-conflict",
            )
        existing = await state.store.get(outcome.job_id)  # the key is the tenant's own
        if existing is None:
            raise ProblemError(409, "Idempotency key refers to an expired job", slug="expired")
        metrics.submissions.labels("duplicate").inc()
        return job_response(existing, 200, location)

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
    ) -> Response:
        """The caller's jobs, newest first, optionally filtered; follow `next_cursor` for the
        next page. An admin key lists every tenant's jobs, or one tenant's with `tenant`.
        An unknown `task` is a 422 naming the valid ones.
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
            await run_in_threadpool(_revoke, state, job_id, terminate)
        job = await existing_job(state, job_id, principal)
        if outcome.callback_pending:
            await _enqueue_callback(state, job)
        return job

    return router


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


def job_response(job: Job, status: int, headers: dict[str, str]) -> Response:
    """The job as JSON, serialized once (FastAPI would validate the model again first)."""
    return Response(job.model_dump_json(), status, headers, media_type="application/json")


def _check_urls(state: ApiState, request: SubmissionBase, args: Any) -> None:
    """422 for a callback or argument URL that can never be reached: a scheme other than
    http(s), or a literal non-public address. Names are resolved and checked again when the
    request is made (the address behind a name can change).
    """
    if request.callback_url is not None and not state.settings.webhook.enabled:
        raise ProblemError(
            422,
            "Invalid request",
            "Completion callbacks are disabled on this deployment; see errors.",
            slug="validation-error",
            errors=[{"pointer": "#/callback_url", "detail": "callbacks are disabled"}],
        )
    guard = NetGuard(state.settings.webhook.allowed_networks)
    urls: list[tuple[str, AnyUrl]] = []
    if request.callback_url is not None:
        urls.append(("#/callback_url", request.callback_url))
    urls.extend(
        (f"#/args/{name}", value)
        for name, value in getattr(args, "__dict__", {}).items()
        if isinstance(value, AnyUrl)
    )
    for pointer, url in urls:
        try:
            guard.check_literal(url.scheme, url.host or "")
        except UnsafeUrlError as exc:
            raise ProblemError(
                422,
                "Invalid request",
                "A URL points where the platform does not send requests; see errors.",
                slug="validation-error",
                errors=[{"pointer": pointer, "detail": str(exc)}],
            ) from None


def _revoke(state: ApiState, job_id: str, terminate: bool) -> None:
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
