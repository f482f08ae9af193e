"""Keeping the job record true while a job runs: start, progress, retry, finish, callback.

This is the base class of every Conveyor task rather than a set of signal handlers because it
must decide whether the task body runs at all (a cancelled job never does), and Celery
signals cannot veto a task.
"""

import logging
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import orjson
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from opentelemetry import propagate
from redis.exceptions import RedisError

from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import JobContext, TaskCatalog, TaskSpec
from conveyor.core.errors import JobCancelledError
from conveyor.core.jobs import JobError, JobState
from conveyor.core.messages import (
    DUE_AT_HEADER,
    ENQUEUED_AT_HEADER,
    GENERATION_HEADER,
    MAX_RETRIES_HEADER,
    QUEUE_HEADER,
    TENANT_HEADER,
    build_message,
)
from conveyor.core.queues import Queue
from conveyor.core.sanitize import Sanitizer
from conveyor.core.settings import Settings
from conveyor.core.store import JobStore
from conveyor.core.submit import prepare
from conveyor.worker.events import job_finished, job_started

log = logging.getLogger(__name__)

# Progress writes closer together than this are dropped (the last one always lands).
PROGRESS_MIN_INTERVAL = 0.1


class JobRunner:
    """Runs one delivery of a job and records its outcome in the job store.

    A broker error while recording raises `Reject(requeue=True)`: the message is never acked
    for a job whose record was not written, so a Redis blip can delay a job, never lose it.
    """

    def __init__(self, store: JobStore, catalog: TaskCatalog, settings: Settings) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings
        self.sanitizer = Sanitizer.for_settings(settings)

    def run(self, spec: TaskSpec, request: Any, kwargs: Mapping[str, Any]) -> None:
        """Run the job behind `request` unless it was cancelled, finished or is poison."""
        job_id: str = request.id
        queue = Queue(getattr(request, QUEUE_HEADER, None) or spec.queue)
        generation = _generation(request)
        with _requeue_on_broker_error(job_id):
            started = self.store.start(
                job_id, time.time(), self.settings.worker.max_worker_deaths, generation
            )
        if started.verdict == "skip":
            # Cancelled, finished by an earlier delivery, or expired: never run it (again).
            log.info("job %s not run: state is %s", job_id, started.previous_state or "unknown")
            return
        if started.verdict == "poison":
            error = JobError(
                type="WorkerLost",
                message=f"the worker died while running this job {started.deaths} times",
            )
            log.error("job %s dead-lettered: %s", job_id, error.message)
            replay = self._message(spec, request, kwargs, queue, retries=0, next_generation=True)
            never_ran = _Attempt(job_id, spec.name, queue, started_at=None)
            self._finish(never_ran, JobState.FAILED, {"error": error.model_dump_json()}, replay,
                         exception="WorkerLost")  # fmt: skip
            return
        attempt = _Attempt(job_id, spec.name, queue, started_at=time.monotonic())
        job_started.send(
            sender=spec.name,
            job_id=job_id,
            task=spec.name,
            queue=queue,
            attempt=started.attempts,
            wait_seconds=_queue_wait(request),
            redelivered=started.previous_state is JobState.RUNNING,
        )
        log.info("job started (attempt %d)", started.attempts)
        ctx = JobContext(
            job_id=job_id,
            tenant=getattr(request, TENANT_HEADER, None) or "",
            task=spec.name,
            queue=queue,
            attempt=started.attempts,
            progress=_ProgressWriter(self.store, job_id),
            settings=self.settings,
        )
        try:
            result = spec.run(ctx, kwargs)
            encoded = orjson.dumps(result)
        except JobCancelledError:
            log.info("job %s stopped: cancelled while running", job_id)
            attempt.finished("cancelled")
            return
        except Exception as exc:  # noqa: BLE001 - every task failure is recorded, none escapes
            self._failed(spec, request, kwargs, attempt, exc)
            return
        self._finish(attempt, JobState.SUCCEEDED, {"result": encoded.decode(), "error": ""})

    def _failed(
        self,
        spec: TaskSpec,
        request: Any,
        kwargs: Mapping[str, Any],
        attempt: "_Attempt",
        exc: Exception,
    ) -> None:
        job_id, queue = attempt.job_id, attempt.queue
        retries_done = int(request.retries or 0)
        max_retries = int(getattr(request, MAX_RETRIES_HEADER, spec.retry.max_retries))
        error, kind = self._error(exc), _error_type(exc)
        if not spec.retry.is_retryable(exc):
            self._finish(attempt, JobState.FAILED, {"error": error}, exception=kind)
            return
        if retries_done >= max_retries:
            log.warning("job %s dead-lettered after %d retries: %s", job_id, retries_done, exc)
            replay = self._message(spec, request, kwargs, queue, retries=0, next_generation=True)
            self._finish(attempt, JobState.FAILED, {"error": error}, replay, exception=kind)
            return
        now = time.time()
        due_at = now + spec.retry.delay_for(retries_done + 1, random.random())  # noqa: S311 - jitter
        message = self._message(
            spec, request, kwargs, queue, retries_done + 1, due_at=due_at, next_generation=True
        )
        with _requeue_on_broker_error(job_id):
            self.store.transition(
                job_id,
                allowed=(JobState.RUNNING,),
                new_state=JobState.RETRYING,
                delayed=("add", due_at, message),
                fields={"error": error, "generation": str((_generation(request) or 0) + 1)},
            )
        log.info("job %s retry %d in %.1fs: %s", job_id, retries_done + 1, due_at - now, exc)
        attempt.finished("retried", exception=kind)

    def _error(self, exc: BaseException) -> str:
        """The error field clients read: type and sanitized message, never a traceback."""
        message = self.sanitizer.text(str(exc))
        return JobError(type=_error_type(exc), message=message).model_dump_json()

    def fail_timed_out(self, job_id: str, task: str, queue: Queue, exc: BaseException) -> None:
        """Mark a job failed by its hard time limit (from the main process: the child is gone)."""
        attempt = _Attempt(job_id, task, queue, started_at=None)
        self._finish(
            attempt, JobState.FAILED, {"error": self._error(exc)}, exception=_error_type(exc)
        )

    def _finish(
        self,
        attempt: "_Attempt",
        state: JobState,
        fields: dict[str, str],
        dead_message: bytes | None = None,
        exception: str | None = None,
    ) -> None:
        job_id = attempt.job_id
        now = time.time()
        fields = {**fields, "finished_at": repr(now)}
        delayed: tuple[str, float | None, bytes] = ("", None, b"")
        if dead_message is not None:
            delayed = ("dead", now, dead_message)
            fields["dead_lettered_at"] = repr(now)
        with _requeue_on_broker_error(job_id):
            # QUEUED too: a job handed back at shutdown may still complete in its last moments;
            # its result then stands and the handed-back copy is skipped.
            finished = self.store.transition(
                job_id,
                allowed=(JobState.RUNNING, JobState.QUEUED),
                new_state=state,
                delayed=delayed,
                fields=fields,
            )
        attempt.finished(
            "succeeded" if state is JobState.SUCCEEDED else "failed",
            exception=exception,
            dead_lettered=dead_message is not None and finished.applied,
        )
        if finished.applied and finished.has_callback:
            self.after_terminal(job_id)

    def _message(
        self,
        spec: TaskSpec,
        request: Any,
        kwargs: Mapping[str, Any],
        queue: Queue,
        retries: int,
        due_at: float | None = None,
        next_generation: bool = False,
    ) -> bytes:
        soft, hard = (request.timelimit or (None, None))[::-1]
        trace_context: dict[str, str] = {}
        propagate.inject(trace_context)  # a retry stays in the job's trace
        return build_message(
            job_id=request.id,
            task=spec.name,
            queue=queue,
            kwargs=kwargs,
            retries=retries,
            max_retries=int(getattr(request, MAX_RETRIES_HEADER, spec.retry.max_retries)),
            soft_time_limit=soft,
            time_limit=hard,
            enqueued_at=time.time(),
            due_at=due_at,
            trace_context=trace_context,
            generation=(_generation(request) or 0) + (1 if next_generation else 0),
            tenant=getattr(request, TENANT_HEADER, None) or "",
        )

    def after_terminal(self, job_id: str) -> None:
        """Enqueue the completion callback, if the job asked for one. Never raises."""
        try:
            job = self.store.get(job_id)
            submission = callback_submission(job, self.catalog) if job else None
            if submission is not None:
                new_job, message = prepare(self.catalog[submission.task], submission, self.settings)
                self.store.accept(new_job, message)
        except Exception:
            log.exception("could not enqueue the completion callback of job %s", job_id)


class _Attempt:
    """One delivery of a job, timed, announcing its end on `job_finished` exactly once."""

    def __init__(self, job_id: str, task: str, queue: Queue, started_at: float | None) -> None:
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.started_at = started_at
        self._done = False

    def finished(
        self, outcome: str, exception: str | None = None, dead_lettered: bool = False
    ) -> None:
        if self._done:
            return
        self._done = True
        runtime = None if self.started_at is None else time.monotonic() - self.started_at
        if runtime is not None:  # logged while the job's log context is still bound
            log.info("job %s in %.3fs", outcome, runtime)
        job_finished.send(
            sender=self.task,
            job_id=self.job_id,
            task=self.task,
            queue=self.queue,
            outcome=outcome,
            runtime_seconds=runtime,
            exception=exception,
            dead_lettered=dead_lettered,
        )


def _generation(request: Any) -> int | None:
    """The message's generation header (None for a message from outside Conveyor)."""
    value = getattr(request, GENERATION_HEADER, None)
    return None if value is None else int(value)


def _queue_wait(request: Any) -> float | None:
    """Start time minus max(enqueue time, due time), from the headers the API sets."""
    enqueued = getattr(request, ENQUEUED_AT_HEADER, None)
    if enqueued is None:
        return None
    ready = max(float(enqueued), float(getattr(request, DUE_AT_HEADER, None) or 0.0))
    return max(0.0, time.time() - ready)


@contextmanager
def _requeue_on_broker_error(job_id: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        log.warning("job %s: job store unreachable (%s); handing the message back", job_id, exc)
        raise Reject(exc, requeue=True) from exc


class ConveyorTask(Task[Any, None]):
    """Celery binding of a catalogued task; `create_celery` subclasses it per app."""

    spec: TaskSpec
    runner: ClassVar[JobRunner]
    typing = False  # arguments are validated by the task's pydantic model instead

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Run the job; the job's result lives in the job record, not in Celery."""
        self.runner.run(self.spec, self.request, kwargs)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Reached for hard time limits (in the main process, the child is gone)."""
        if isinstance(exc, TimeLimitExceeded):
            queue = Queue(getattr(self.request, QUEUE_HEADER, None) or self.spec.queue)
            self.runner.fail_timed_out(task_id, self.spec.name, queue, exc)
        else:
            log.error("job %s: unexpected failure outside the task body: %r", task_id, exc)


class _ProgressWriter:
    """The `ctx.progress` callable: writes progress, raises if the job was cancelled."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self._last_write = 0.0

    def __call__(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        now = time.monotonic()
        final = total is not None and current >= total
        if not final and now - self._last_write < PROGRESS_MIN_INTERVAL:
            return
        self._last_write = now
        progress = {"current": current, "total": total, "message": message}
        result = self.store.transition(
            self.job_id,
            allowed=(JobState.RUNNING,),
            new_state=JobState.RUNNING,
            fields={"progress": orjson.dumps(progress).decode()},
        )
        if not result.applied and result.previous_state is JobState.CANCELLED:
            raise JobCancelledError(self.job_id)


def _error_type(exc: BaseException) -> str:
    return "TimeLimitExceeded" if isinstance(exc, SoftTimeLimitExceeded) else type(exc).__name__
