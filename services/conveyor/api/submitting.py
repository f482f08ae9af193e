"""From a validated submission to a job, and from the accept script's verdict to an answer:
what POST /v1/jobs and POST /v1/jobs/batch share, so that one job submitted either way is
checked, accepted, counted and answered alike.
"""

import hashlib
import re
from dataclasses import field
from typing import Any

import orjson
from pydantic import AnyUrl

from conveyor.api.auth import rate_limit_headers, too_many_requests
from conveyor.api.limits import check_args_shape
from conveyor.api.problems import ProblemError
from conveyor.api.schemas import SubmissionBase
from conveyor.api.state import ApiState
from conveyor.core.apikeys import TenantLimits
from conveyor.core.bounds import IDEMPOTENCY_KEY_PATTERN
from conveyor.core.catalog import TaskSpec
from conveyor.core.netguard import NetGuard, UnsafeUrlError
from conveyor.core.schedules import RUN_KEY
from conveyor.core.values import value
from conveyor.jobstore.keys import callback_idempotency_key
from conveyor.jobstore.model import Job, UniqueMode, UniqueSpec
from conveyor.jobstore.results import AcceptResult, AcceptVerdict, Limits
from conveyor.jobstore.submission import Submission

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
# The prefixes of the platform's own idempotency keys: a callback's is `callback:<job id>`,
# a schedule's run `schedule:<id>:<tick>`. A tenant claiming one would suppress or replace
# the platform's job (its callback, a schedule's run).
RESERVED_KEY_PREFIXES = (callback_idempotency_key(""), RUN_KEY.partition("{")[0])


@value
class Answer:
    """What one submission is answered: a job (202 new, 200 replay) or a problem."""

    status: int
    job: Job | None = None
    problem: ProblemError | None = None
    headers: dict[str, str] = field(default_factory=dict)


def submission_of(
    state: ApiState, request: SubmissionBase, tenant: str, idempotency_key: str | None
) -> tuple[TaskSpec, Submission]:
    """The job `request` asks for, for `tenant`; a ProblemError (422) for a URL that can
    never be reached or arguments past the size and number limits.
    """
    task: str = getattr(request, "task")  # noqa: B009 - set by every union variant
    spec = state.catalog[task]
    args_model = getattr(request, "args")  # noqa: B009
    _check_urls(state, request, args_model)
    limits = state.settings.limits
    check_args_shape(args_model.model_dump(), limits.max_args_depth, limits.max_string_length)
    args = args_model.model_dump(mode="json")
    submission = Submission.of(
        spec,
        tenant=tenant,
        args=args,
        priority=request.priority,
        max_retries=request.max_retries,
        timeout_seconds=request.timeout_seconds,
        delay_seconds=request.delay_seconds,
        idempotency_key=idempotency_key,
        callback_url=str(request.callback_url) if request.callback_url else None,
        # Read from the fields: a variant without the field made getattr go through
        # pydantic's __getattr__ and an AttributeError (~2 µs a job).
        concurrency_key=request.__dict__.get("concurrency_key"),
        unique=_unique_of(request, args),
    )
    return spec, submission


def _unique_of(request: SubmissionBase, args: dict[str, Any]) -> UniqueSpec | None:
    """The submission's uniqueness, its key defaulted: a fingerprint of the arguments (the
    task alone for debounce, whose arguments change).
    """
    unique = request.unique
    if unique is None:
        return None
    if unique.mode is UniqueMode.DEBOUNCE and not request.delay_seconds:
        raise ProblemError(
            422,
            "Invalid request",
            "Debounce needs a delay: the job waits that long for later submissions; see errors.",
            slug="validation-error",
            errors=[{"pointer": "#/delay_seconds", "detail": "debounce needs delay_seconds > 0"}],
        )
    key = unique.key
    if key is None:
        canonical = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
        fingerprint = "args-" + hashlib.sha256(canonical).hexdigest()[:32]
        key = "task" if unique.mode is UniqueMode.DEBOUNCE else fingerprint
    return UniqueSpec(key=key, mode=unique.mode, ttl_seconds=unique.ttl_seconds or 0)


def accept_limits(state: ApiState, tenant: TenantLimits, submission: Submission) -> Limits:
    """What the accept script enforces for this job: the tenant's bucket, the queue's depth."""
    limits = state.settings.limits
    return Limits(
        rate_per_second=tenant.rate_per_second,
        burst=tenant.burst,
        max_queue_depth=limits.max_queue_depth.for_queue(submission.queue),
        max_delayed_jobs=limits.max_delayed_jobs,
        weight=tenant.weight,
        concurrency_per_tier=tenant.concurrency_per_tier,
        max_queued_per_tier=tenant.max_queued_per_tier,
        max_delayed_per_tenant=tenant.max_delayed,
        max_bytes=tenant.max_bytes,
    )


async def answer(
    state: ApiState, outcome: AcceptResult, submission: Submission, tenant: TenantLimits
) -> Answer:
    """The answer to one accepted (or refused) submission, counted in the API's metrics."""
    counted, result = await judged(state, outcome, submission, tenant)
    state.metrics.submitted[counted].inc()
    return result


async def judged(
    state: ApiState, outcome: AcceptResult, submission: Submission, tenant: TenantLimits
) -> tuple[str, Answer]:
    """The answer to one accepted (or refused) submission, and the outcome it counts as in
    `ApiMetrics.submitted`, for a caller counting many at once (a batch).
    """
    location = {"Location": f"/v1/jobs/{outcome.job_id}"}
    verdict = outcome.verdict
    if verdict is AcceptVerdict.CREATED and outcome.job is not None:
        headers = {**location, **rate_limit_headers(tenant, outcome.tokens_left)}
        return "accepted", Answer(202, job=outcome.job, headers=headers)
    if verdict is AcceptVerdict.EXISTING:
        existing = await state.store.get(outcome.job_id)  # the key is the tenant's own
        if existing is None:  # a 409 about the key, as a conflicting reuse is
            return "conflict", _refused(
                409, "Idempotency key refers to an expired job", slug="expired"
            )
        return "duplicate", Answer(200, job=existing, headers=location)
    if verdict is AcceptVerdict.RATE_LIMITED:
        refusal = too_many_requests(tenant, outcome.retry_after_ms)
        return "rate_limited", Answer(429, problem=refusal)
    if verdict is AcceptVerdict.QUEUE_FULL:
        retry_after = state.settings.limits.backpressure_retry_after_seconds
        return "queue_full", _refused(
            503,
            "Queue full",
            # Never the depth: one tenant must not learn how much the others have queued.
            f"The {submission.queue} queue is full; nothing was accepted. Retry later.",
            slug="queue-full",
            headers={"Retry-After": str(retry_after)},
        )
    if verdict is AcceptVerdict.QUOTA_EXCEEDED and outcome.quota is not None:
        return "quota_exceeded", _refused(
            429,
            "Quota exceeded",
            _quota_detail(outcome.quota.name, outcome.quota.limit, submission),
            slug="quota-exceeded",
            headers={"Retry-After": str(state.settings.limits.backpressure_retry_after_seconds)},
        )
    if verdict is AcceptVerdict.NOT_REPLICATED:  # counted as the broker's failing
        return "broker_error", _refused(
            503,
            "Not replicated",
            f"Job {outcome.job_id} is recorded on the primary but only {outcome.replicas} "
            "replica(s) confirmed it in time, so it is not acknowledged. Retry with the same "
            "idempotency key: a retry never duplicates it.",
            slug="not-replicated",
            headers={"Retry-After": str(state.settings.redis_replication.retry_after_seconds)},
        )
    if verdict is AcceptVerdict.BROKER_ERROR:
        return "broker_error", _refused(
            503,
            "Broker unavailable",
            "The job store refused this job; nothing of it was accepted. Retry later.",
            slug="broker-unavailable",
            headers={"Retry-After": "2"},
        )
    return "conflict", _refused(
        409,
        "Idempotency key reused",
        f"Idempotency key {submission.idempotency_key!r} was used for a different request "
        f"(job {outcome.job_id}).",
        slug="idempotency-conflict",
    )


def _refused(status: int, title: str, detail: str | None = None, **kwargs: Any) -> Answer:
    return Answer(status, problem=ProblemError(status, title, detail, **kwargs))


def idempotency_key(from_body: str | None, from_header: str | None) -> str | None:
    """The request's idempotency key, from the body or the header; 422 if they disagree."""
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
    key = from_body or from_header
    if key is not None and key.startswith(RESERVED_KEY_PREFIXES):
        raise ProblemError(
            422,
            "Invalid request",
            f"Idempotency keys starting with {' or '.join(map(repr, RESERVED_KEY_PREFIXES))} "
            "are the platform's own.",
            slug="validation-error",
            errors=[{"pointer": "#/idempotency_key", "detail": "a reserved prefix"}],
        )
    return key


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
    urls: list[tuple[str, AnyUrl]] = []
    if request.callback_url is not None:
        urls.append(("#/callback_url", request.callback_url))
    urls.extend(
        (f"#/args/{name}", value)
        for name, value in getattr(args, "__dict__", {}).items()
        if isinstance(value, AnyUrl)
    )
    if not urls:
        return  # most jobs: no policy to build
    guard = NetGuard(state.settings.webhook.allowed_networks)
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


def _quota_detail(quota: str, limit: int, submission: Submission) -> str:
    """The tenant's own quota, in its own numbers (never another tenant's or the total)."""
    what = {
        "queued": f"{limit} jobs waiting on the {submission.queue} tier",
        "delayed": f"{limit} delayed jobs",
        "bytes": f"{limit} bytes of waiting and delayed jobs",
    }.get(quota, quota)
    return f"This tenant's quota of {what} is reached; nothing was accepted. Retry later."
