"""A submission: what a caller asks for, with every default resolved in one place, and the
job record and Celery message it becomes.

The API, beat (periodic runs) and workers (completion callbacks) all build a `Submission` with
`Submission.of` and hand it to their store's `submit`, so every job, whoever creates it, is
recorded and enqueued the same way.
"""

import hashlib
import time
from typing import Any

import orjson
from opentelemetry import propagate, trace

from conveyor.core.catalog import TaskSpec
from conveyor.core.ids import random_uuid
from conveyor.core.messages import build_message
from conveyor.core.queues import Queue
from conveyor.core.settings import WorkerSettings
from conveyor.core.values import value
from conveyor.jobstore.model import Job, NewJob, UniqueSpec


@value
class Submission:
    """Everything a client may say about a job, with arguments already validated."""

    tenant: str
    task: str
    args: dict[str, Any]
    queue: Queue
    max_retries: int
    timeout_seconds: int | None = None
    delay_seconds: float = 0.0
    idempotency_key: str | None = None
    callback_url: str | None = None
    concurrency_key: str | None = None
    unique: UniqueSpec | None = None

    @classmethod
    def of(
        cls,
        spec: TaskSpec,
        *,
        tenant: str,
        args: dict[str, Any],
        priority: Queue | None = None,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
        delay_seconds: float = 0.0,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        concurrency_key: str | None = None,
        unique: UniqueSpec | None = None,
    ) -> "Submission":
        """A submission of `spec`'s task; what the caller leaves out is the task's default."""
        return cls(
            tenant=tenant,
            task=spec.name,
            args=args,
            queue=priority or spec.queue,
            max_retries=spec.retry.max_retries if max_retries is None else max_retries,
            timeout_seconds=timeout_seconds,
            delay_seconds=delay_seconds,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            concurrency_key=concurrency_key,
            unique=unique,
        )

    def request_hash(self) -> str:
        """Fingerprint of the request, to tell a replay from a conflicting reuse of a key."""
        canonical = orjson.dumps(
            {
                "task": self.task,
                "args": self.args,
                "queue": str(self.queue),
                "max_retries": self.max_retries,
                "timeout_seconds": self.timeout_seconds,
                "delay_seconds": self.delay_seconds,
                "callback_url": self.callback_url,
                **({"concurrency_key": self.concurrency_key} if self.concurrency_key else {}),
                **({"unique": self.unique.fields()} if self.unique else {}),
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(canonical).hexdigest()


def time_limits(
    spec: TaskSpec, timeout_seconds: int | None, worker: WorkerSettings
) -> tuple[int, int]:
    """(soft, hard) limits: the job's own timeout, else the task's, else the worker default,
    at most the task's maximum.
    """
    soft = spec.time_limit(timeout_seconds, worker.default_timeout_seconds)
    return soft, soft + worker.hard_timeout_grace_seconds


def message_for(
    job: Job | NewJob,
    spec: TaskSpec,
    worker: WorkerSettings,
    *,
    generation: int = 0,
    enqueued_at: float | None = None,
    due_at: float | None = None,
    trace_context: dict[str, str] | None = None,
) -> bytes:
    """The Celery message of an accepted job, of `generation`: its first (from `prepare`), or
    a fresh one (a repair of an abandoned run). The trace context travels with it: the
    current one unless given (`current_trace_context()`, once for many messages).
    """
    soft, hard = time_limits(spec, job.timeout_seconds, worker)
    if trace_context is None:
        trace_context = current_trace_context()
    return build_message(
        job_id=job.id,
        task=job.task,
        queue=job.queue,
        kwargs=job.args,
        max_retries=job.max_retries,
        soft_time_limit=soft,
        time_limit=hard,
        enqueued_at=time.time() if enqueued_at is None else enqueued_at,
        due_at=due_at,
        trace_context=trace_context,
        generation=generation,
        tenant=job.tenant,
        task_limit=spec.max_concurrency,
        concurrency_key=job.concurrency_key,
        key_limit=spec.concurrency_key_limit,
    )


def current_trace_context() -> dict[str, str]:
    """The active span's W3C trace context (empty unless a span is active: tracing on)."""
    if not trace.get_current_span().get_span_context().is_valid:
        # No span (tracing off): nothing to carry, without the propagators' work (3 % of a
        # submission's CPU). Conveyor sets no baggage, the one thing they would carry alone.
        return {}
    trace_context: dict[str, str] = {}
    propagate.inject(trace_context)
    return trace_context


def prepare(
    spec: TaskSpec,
    submission: Submission,
    worker: WorkerSettings,
    now: float | None = None,
    trace_context: dict[str, str] | None = None,
) -> tuple[NewJob, bytes]:
    """The job record and queue message for a submission (not yet written); with
    `trace_context`, the one its message carries (the current one otherwise).
    """
    now = time.time() if now is None else now
    due_at = now + submission.delay_seconds if submission.delay_seconds > 0 else None
    job = NewJob(
        id=random_uuid(),
        tenant=submission.tenant,
        task=submission.task,
        queue=submission.queue,
        args=submission.args,
        max_retries=submission.max_retries,
        timeout_seconds=submission.timeout_seconds,
        idempotency_key=submission.idempotency_key,
        callback_url=submission.callback_url,
        concurrency_key=submission.concurrency_key,
        unique=submission.unique,
        created_at=now,
        due_at=due_at,
        # Only a key's replay is told from a conflicting reuse by it: without a key there
        # is nothing to compare, and no hash to spend a serialization and a digest on.
        request_hash=submission.request_hash() if submission.idempotency_key else "",
    )
    message = message_for(
        job, spec, worker, enqueued_at=now, due_at=due_at, trace_context=trace_context
    )
    return job, message
