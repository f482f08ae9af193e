"""Keeping the job record true while a job runs: start, progress, retry, finish, callback.

This is the base class of every Conveyor task rather than a set of signal handlers because it
must decide whether the task body runs at all (a cancelled job never does), and Celery
signals cannot veto a task.
"""

import logging
import random
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import JobContext, TaskCatalog, TaskSpec
from conveyor.core.errors import JobCancelledError
from conveyor.core.jobs import JobError, JobState
from conveyor.core.messages import MAX_RETRIES_HEADER, QUEUE_HEADER, build_message
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.store import STARTABLE, JobStore
from conveyor.core.submit import prepare

log = logging.getLogger(__name__)

# Progress writes closer together than this are dropped (the last one always lands).
PROGRESS_MIN_INTERVAL = 0.1


class JobRunner:
    """Runs one delivery of a job and records its outcome in the job store."""

    def __init__(self, store: JobStore, catalog: TaskCatalog, settings: Settings) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings

    def run(self, spec: TaskSpec, request: Any, kwargs: Mapping[str, Any]) -> None:
        """Run the job behind `request` unless it was cancelled or already finished."""
        job_id: str = request.id
        started = self.store.transition(
            job_id,
            allowed=STARTABLE,
            new_state=JobState.RUNNING,
            count_attempt=True,
            fields={"started_at": repr(time.time()), "progress": "", "finished_at": ""},
        )
        if not started.applied:
            # Cancelled, finished by an earlier delivery, or expired: never run it (again).
            log.info("job %s not run: state is %s", job_id, started.previous_state or "unknown")
            return
        queue = Queue(getattr(request, QUEUE_HEADER, None) or spec.queue)
        ctx = JobContext(
            job_id=job_id,
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
            return
        except Exception as exc:  # noqa: BLE001 - every task failure is recorded, none escapes
            self._failed(spec, request, kwargs, queue, exc)
            return
        finished = self.store.transition(
            job_id,
            allowed=(JobState.RUNNING,),
            new_state=JobState.SUCCEEDED,
            fields={"result": encoded.decode(), "finished_at": repr(time.time()), "error": ""},
        )
        if finished.applied:
            self.after_terminal(job_id)

    def _failed(
        self,
        spec: TaskSpec,
        request: Any,
        kwargs: Mapping[str, Any],
        queue: Queue,
        exc: Exception,
    ) -> None:
        job_id: str = request.id
        retries_done = int(request.retries or 0)
        max_retries = int(getattr(request, MAX_RETRIES_HEADER, spec.retry.max_retries))
        error = _error(exc)
        if spec.retry.is_retryable(exc) and retries_done < max_retries:
            now = time.time()
            due_at = now + spec.retry.delay_for(retries_done + 1, random.random())  # noqa: S311 - jitter
            soft, hard = (request.timelimit or (None, None))[::-1]
            message = build_message(
                job_id=job_id,
                task=spec.name,
                queue=queue,
                kwargs=kwargs,
                retries=retries_done + 1,
                max_retries=max_retries,
                soft_time_limit=soft,
                time_limit=hard,
                enqueued_at=now,
                due_at=due_at,
            )
            self.store.transition(
                job_id,
                allowed=(JobState.RUNNING,),
                new_state=JobState.RETRYING,
                delayed=("add", due_at, message),
                fields={"error": error},
            )
            log.info("job %s retry %d in %.1fs: %s", job_id, retries_done + 1, due_at - now, exc)
            return
        self.fail(job_id, error)

    def fail(self, job_id: str, error: str) -> None:
        """Mark a running job failed (also used for hard time limits, from the main process)."""
        finished = self.store.transition(
            job_id,
            allowed=(JobState.RUNNING,),
            new_state=JobState.FAILED,
            fields={"error": error, "finished_at": repr(time.time())},
        )
        if finished.applied:
            self.after_terminal(job_id)

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
            self.runner.fail(task_id, _error(exc))
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


def _error(exc: BaseException) -> str:
    kind = "TimeLimitExceeded" if isinstance(exc, SoftTimeLimitExceeded) else type(exc).__name__
    return JobError(type=kind, message=str(exc)[:2000]).model_dump_json()
