"""Keeping the job record true while a job runs: start, progress, retry, finish, callback.

This is the base class of every Conveyor task rather than a set of signal handlers because it
must decide whether the task body runs at all (a cancelled job never does), and Celery
signals cannot veto a task.
"""

import logging
import os
import random
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker import state as worker_state
from celery.worker.request import Request
from redis.exceptions import RedisError

from conveyor.core.callbacks import callback_submission
from conveyor.core.catalog import JobContext, TaskCatalog, TaskSpec
from conveyor.core.errors import JobCancelledError, JobSupersededError, PermanentError
from conveyor.core.queues import Queue
from conveyor.core.sanitize import Sanitizer
from conveyor.core.settings import Settings
from conveyor.jobstore.model import JobError, JobState
from conveyor.jobstore.results import TransitionResult
from conveyor.jobstore.runs import Fence, StartVerdict, StepInputs
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.workflow_model import WorkflowEnd
from conveyor.worker.delivery import Delivery
from conveyor.worker.job_signals import job_finished, job_started, workflow_ended

log = logging.getLogger(__name__)

# Progress writes closer together than this are dropped (the last one always lands).
PROGRESS_MIN_INTERVAL = 0.1


class JobRunner:
    """Runs one delivery of a job and records its outcome with the job store's verbs.

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
        delivery = Delivery.of(spec, request)
        job_id = delivery.job_id
        with _requeue_on_broker_error(job_id), _shielded():
            started = self.store.start(job_id, delivery.generation, owner=process_owner(),
                                       delivery=delivery.tag)  # fmt: skip
        if started.verdict is StartVerdict.SKIP:
            # Cancelled, finished by an earlier delivery, or expired: never run it (again).
            log.info("job %s not run: state is %s", job_id, started.previous_state or "unknown")
            _announce_workflow_end(job_id, started.workflow_ended)
            return
        if started.verdict is StartVerdict.POISON:
            error = JobError(
                type="WorkerLost",
                message=f"the worker died while running this job {started.deaths} times",
            )
            log.error("job %s dead-lettered: %s", job_id, error.message)
            replay = delivery.next_message(kwargs, retries=0)
            never_ran = _Attempt(job_id, spec.name, delivery.queue, started_at=None)
            self._dead_letter(never_ran, error.model_dump_json(), replay, exception="WorkerLost")
            return
        fence = Fence.attempt(started.attempts)
        attempt = _Attempt(
            job_id, spec.name, delivery.queue, started_at=time.monotonic(), fence=fence
        )
        job_started.send(
            sender=spec.name,
            job_id=job_id,
            task=spec.name,
            queue=delivery.queue,
            attempt=started.attempts,
            wait_seconds=delivery.queue_wait(released_at=started.released_at),
            redelivered=started.previous_state is JobState.RUNNING,
        )
        log.info("job started (attempt %d)", started.attempts)
        ctx = JobContext(
            job_id=job_id,
            tenant=delivery.tenant,
            task=spec.name,
            queue=delivery.queue,
            attempt=started.attempts,
            progress=_ProgressWriter(self.store, job_id, fence),
            settings=self.settings,
        )
        try:
            if started.inputs is not None:
                kwargs = {**kwargs, **self._inputs(started.inputs)}
            result = spec.run(ctx, kwargs)
            encoded = orjson.dumps(result)
        except JobCancelledError:
            log.info("job %s stopped: cancelled while running", job_id)
            attempt.finished("cancelled")
            return
        except JobSupersededError:
            log.warning("job %s stopped: a newer attempt of it started elsewhere", job_id)
            attempt.finished("superseded")
            return
        except (SystemExit, KeyboardInterrupt):
            # The process is being stopped (a hand-back or a cold shutdown): the message goes
            # back to the queue, so nothing is recorded here.
            raise
        except BaseException as exc:  # noqa: BLE001 - every task failure is recorded, none escapes
            # Exceptions and what escapes them too (asyncio.CancelledError, a task's own
            # BaseException): a run always ends in a recorded state, never a bare ack.
            self._failed(spec, delivery, kwargs, attempt, exc)
            return
        with _requeue_on_broker_error(job_id), _shielded():
            done = self.store.succeed(job_id, encoded.decode(), fence)
        self._finished(attempt, done, "succeeded")

    def _inputs(self, inputs: StepInputs) -> dict[str, Any]:
        """A workflow step's arguments from its parents' results (it fails, permanently,
        when one is gone or they are too large).
        """
        if inputs.missing_parent is not None:
            missing = inputs.missing_parent
            raise PermanentError(f"the result of parent job {missing} is gone (expired or "
                                 "purged); the step cannot have its inputs")  # fmt: skip
        limit = self.settings.workflows.max_input_bytes
        if inputs.size > limit:
            raise PermanentError(f"the parents' results are {inputs.size} bytes; a step takes "
                                 f"at most {limit} (WORKFLOWS__MAX_INPUT_BYTES)")  # fmt: skip
        return inputs.values

    def _failed(
        self,
        spec: TaskSpec,
        delivery: Delivery,
        kwargs: Mapping[str, Any],
        attempt: "_Attempt",
        exc: BaseException,
    ) -> None:
        job_id = attempt.job_id
        error, kind = self._error(exc), _error_type(exc)
        if not isinstance(exc, Exception) or not spec.retry.is_retryable(exc):
            with _requeue_on_broker_error(job_id), _shielded():
                done = self.store.fail(job_id, error, attempt.fence)
            self._finished(attempt, done, "failed", exception=kind)
            return
        if delivery.retries >= delivery.max_retries:
            log.warning("job %s dead-lettered after %d retries: %s", job_id, delivery.retries, exc)
            replay = delivery.next_message(kwargs, retries=0)
            self._dead_letter(attempt, error, replay, exception=kind)
            return
        delay = spec.retry.delay_for(delivery.retries + 1, random.random())  # noqa: S311 - jitter
        message = delivery.next_message(kwargs, delivery.retries + 1, due_at=time.time() + delay)
        with _requeue_on_broker_error(job_id), _shielded():
            done = self.store.retry(
                job_id,
                error=error,
                delay=delay,
                message=message,
                generation=delivery.next_generation,
                retries=delivery.retries + 1,
                fence=attempt.fence,
            )
        _requeue_if_unrecorded(attempt, done)
        if done.stale:
            log.warning("job %s: retry of a superseded attempt discarded", job_id)
        else:
            log.info("job %s retry %d in %.1fs: %s", job_id, delivery.retries + 1, delay, kind)
        attempt.finished("retried", exception=kind)

    def _error(self, exc: BaseException) -> str:
        """The error field clients read: type and sanitized message, never a traceback."""
        try:
            text = str(exc)
        except Exception:  # noqa: BLE001 - an exception whose __str__ raises still fails the job
            text = f"<{type(exc).__name__} that cannot be printed>"
        message = self.sanitizer.text(text)
        return JobError(type=_error_type(exc), message=message).model_dump_json()

    def fail_timed_out(
        self, job_id: str, task: str, queue: Queue, exc: BaseException, owner: str
    ) -> None:
        """Mark a job failed by its hard time limit (from the main process: the child `owner`
        is gone; the write is refused if another process runs the job by now).
        """
        attempt = _Attempt(job_id, task, queue, started_at=None, fence=Fence.owner(owner))
        with _requeue_on_broker_error(job_id):
            done = self.store.fail(job_id, self._error(exc), attempt.fence)
        self._finished(attempt, done, "failed", exception=_error_type(exc))

    def _dead_letter(self, attempt: "_Attempt", error: str, replay: bytes, exception: str) -> None:
        with _requeue_on_broker_error(attempt.job_id), _shielded():
            done = self.store.dead_letter(attempt.job_id, error, replay, attempt.fence)
        self._finished(attempt, done, "failed", exception=exception, dead_lettered=True)

    def _finished(
        self,
        attempt: "_Attempt",
        done: TransitionResult,
        outcome: str,
        exception: str | None = None,
        dead_lettered: bool = False,
    ) -> None:
        """Announce the attempt's end; enqueue the completion callback of a terminal state."""
        _requeue_if_unrecorded(attempt, done)
        if done.stale:
            log.warning("job %s: outcome of a superseded attempt discarded", attempt.job_id)
            outcome = "superseded"
        attempt.finished(outcome, exception=exception,
                         dead_lettered=dead_lettered and done.applied)  # fmt: skip
        _announce_workflow_end(attempt.job_id, done.workflow_ended)
        if done.applied and done.callback_pending:
            self.after_terminal(attempt.job_id)

    def after_terminal(self, job_id: str) -> None:
        """Enqueue the completion callback, if the job asked for one. Never raises."""
        try:
            job = self.store.get(job_id)
            callback = callback_submission(job, self.catalog) if job else None
            if callback is not None:
                self.store.submit(*callback)
            self.store.callback_enqueued(job_id)
        except Exception:  # marked pending: the beat leader's sweep enqueues it later
            log.exception("could not enqueue the completion callback of job %s", job_id)


class _Attempt:
    """One delivery of a job, timed, announcing its end on `job_finished` exactly once."""

    def __init__(
        self,
        job_id: str,
        task: str,
        queue: Queue,
        started_at: float | None,
        fence: Fence | None = None,
    ) -> None:
        self.job_id = job_id
        self.fence = fence
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


def _announce_workflow_end(job_id: str, ended: WorkflowEnd | None) -> None:
    if ended is not None:
        log.info("workflow of job %s %s after %.1fs", job_id, ended.outcome, ended.seconds)
        workflow_ended.send(sender=None, job_id=job_id, outcome=str(ended.outcome),
                            seconds=ended.seconds)  # fmt: skip


def process_owner(pid: int = 0) -> str:
    """'<host>:<pid>' of the process running a job (this one unless `pid` is given): the fence
    the worker's main process writes with for a child's job.
    """
    return f"{socket.gethostname()}:{pid or os.getpid()}"


@contextmanager
def _shielded() -> Iterator[None]:
    """Hold the soft time limit's signal (SIGUSR1 in a prefork child) while a job-store write
    is on the wire: it then lands after the write, which is never cut half-sent (a job whose
    outcome write was interrupted stayed `running` with its message acked).
    """
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    except (OSError, ValueError, AttributeError):  # not in the main thread, or no such signal
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _requeue_on_broker_error(job_id: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        log.warning("job %s: job store unreachable (%s); handing the message back", job_id, exc)
        raise Reject(exc, requeue=True) from exc


def _requeue_if_unrecorded(attempt: "_Attempt", done: TransitionResult) -> None:
    """Hand the message back when the record never counted this run's start (lost with a
    failover: the promoted replica had the delivery's claim but not its start). Acking it
    would leave the job `queued` with its message nowhere; the next delivery runs it again.
    """
    if done.unrecorded:
        log.warning("job %s: the record lost this run's start (a failover); its outcome is "
                    "discarded and the message handed back", attempt.job_id)  # fmt: skip
        attempt.finished("superseded")  # discarded, as a superseded run's outcome is
        raise Reject("run not recorded", requeue=True)


class ConveyorRequest(Request):
    """Celery's request of a Conveyor task: a hard time limit is recorded here, where the
    killed child's pid and the delivery are known (the task's `on_failure`, called next by
    Celery, sees an empty request in the main process).
    """

    def on_timeout(self, soft: bool, timeout: float) -> None:
        """Record a hard time limit as the job's failure, fenced by the child it killed."""
        if not soft and not worker_state.should_terminate:
            task = self.task
            assert isinstance(task, ConveyorTask)
            try:
                queue = Queue(self.delivery_info.get("routing_key") or task.spec.queue)
                owner = process_owner(int(self.worker_pid or 0))
                task.runner.fail_timed_out(self.id, task.spec.name, queue,
                                           TimeLimitExceeded(timeout), owner)  # fmt: skip
            except Exception:  # a failing hook is logged, never kills the worker
                log.exception("job %s: could not record its hard time limit", self.id)
        super().on_timeout(soft, timeout)


class ConveyorTask(Task[Any, None]):
    """Celery binding of one catalogued task: `create_celery` registers one per task."""

    typing = False  # arguments are validated by the task's pydantic model instead
    Request = f"{__name__}:ConveyorRequest"  # Celery takes the class or its path

    def __init__(self, spec: TaskSpec, runner: JobRunner) -> None:
        self.spec = spec
        self.runner = runner
        self.name = spec.name

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Run the job; the job's result lives in the job record, not in Celery."""
        self.runner.run(self.spec, self.request, kwargs)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Log what escaped the run (a hard time limit is recorded by `ConveyorRequest`)."""
        if not isinstance(exc, TimeLimitExceeded):
            log.error("job %s: unexpected failure outside the task body: %r", task_id, exc)


class _ProgressWriter:
    """The `ctx.progress` callable: writes progress, raises if the job was cancelled."""

    def __init__(self, store: JobStore, job_id: str, fence: Fence) -> None:
        self.store = store
        self.job_id = job_id
        self.fence = fence
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
        try:
            with _shielded():
                result = self.store.report_progress(self.job_id, progress, self.fence)
        except RedisError as exc:  # progress is best effort: a broker blip never fails a job
            log.warning("job %s: progress not recorded (%s)", self.job_id, exc)
            return
        if result.stale:
            raise JobSupersededError(self.job_id)
        if not result.applied and result.previous_state is JobState.CANCELLED:
            raise JobCancelledError(self.job_id)


def _error_type(exc: BaseException) -> str:
    return "TimeLimitExceeded" if isinstance(exc, SoftTimeLimitExceeded) else type(exc).__name__
