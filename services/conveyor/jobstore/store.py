"""`JobStore`: the job store of workers and beat (redis-py, blocking).

Its upkeep (promotion, pruning, consumers, sweeps) is `upkeep.StoreUpkeep`.

Every verb is one Lua script call, so each state change is atomic and costs one round trip;
each takes its allowed and new states from `machine.TRANSITIONS`.
"""

import time
import uuid
from typing import Any

import orjson
import redis

from conveyor.core.catalog import TaskSpec
from conveyor.core.settings import Settings
from conveyor.jobstore import _calls
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.machine import Verb, transition
from conveyor.jobstore.model import Job, decode_record, text_of
from conveyor.jobstore.results import AcceptResult, Limits, TransitionResult
from conveyor.jobstore.runs import Fence, StartResult
from conveyor.jobstore.scripts import (
    ACCEPT,
    ACCEPT_WORKFLOW,
    PRIMARY,
    START,
    TRANSITION,
)
from conveyor.jobstore.submission import Submission, prepare
from conveyor.jobstore.upkeep import StoreUpkeep
from conveyor.jobstore.workflow import WorkflowPlan
from conveyor.jobstore.workflow_model import WorkflowState
from conveyor.jobstore.workflow_store import (
    WorkflowAcceptResult,
    accept_workflow_args,
    parse_accept,
)


def confirm_primary(client: "redis.Redis") -> None:
    """Raise unless `client` talks to a primary that may write: a replica or an isolated old
    primary refuses (READONLY, NOREPLICAS; a Sentinel-managed connection then reconnects to
    the current primary). For a client that only reads: a read is never refused, so without
    this it keeps reading a demoted node's frozen data for as long as its connection lives.
    """
    PRIMARY.run(client, [])


class JobStore(StoreUpkeep):
    """Blocking job store for workers and beat: the job's verbs (and, inherited, upkeep)."""

    def __init__(self, client: "redis.Redis", settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = KeySpace(settings.key_prefix)
        self.retention_seconds = settings.jobs.retention_seconds
        self.dead_letter_retention_seconds = settings.jobs.dead_letter_retention_seconds

    # -- creating -------------------------------------------------------------------------

    def submit(self, spec: TaskSpec, submission: Submission) -> AcceptResult:
        """Record and enqueue a job atomically (accept).

        For the platform's own jobs (periodic runs, callbacks): no tenant limit applies,
        since refusing them would lose them.
        """
        job, message = prepare(spec, submission, self.settings.worker)
        ((args, _),) = _calls.accept_calls(self.keys.prefix, [(job, message, Limits())])
        return _calls.parse_accept(_calls.refused_step(ACCEPT.run(self.client, args)[0]), job)

    def submit_workflow(self, plan: WorkflowPlan) -> WorkflowAcceptResult:
        """Accept a workflow atomically (for the platform's own: periodic runs; no tenant
        limit applies, since refusing them would lose them).
        """
        prepared, args = accept_workflow_args(self.settings, plan, Limits(), {})
        return parse_accept(ACCEPT_WORKFLOW.run(self.client, args), prepared)

    # -- a delivery's verbs ---------------------------------------------------------------

    def start(
        self, job_id: str, generation: int | None = None, owner: str = "", delivery: str = ""
    ) -> StartResult:
        """Begin a delivery (tag `delivery`) of the message of `generation` in process `owner`
        (start.lua); the result's `attempts` is the run's fence.
        """
        args = _calls.start_args(
            self.keys.prefix,
            job_id,
            time.time(),
            self.settings.worker.max_worker_deaths,
            generation,
            owner,
            uuid.uuid4().hex,  # one per call: a resent call is recognised, a new one is not
            delivery,
            self.settings.workflows.max_input_bytes,
        )
        return _calls.parse_start(START.run(self.client, args))

    def report_progress(
        self, job_id: str, progress: dict[str, Any], fence: Fence | None = None
    ) -> TransitionResult:
        """Record a running job's progress (refused once it is cancelled, or stale)."""
        fields = {"progress": orjson.dumps(progress).decode()}
        return self._change(Verb.REPORT_PROGRESS, job_id, fence=fence, fields=fields)

    def retry(
        self,
        job_id: str,
        *,
        error: str,
        delay: float,
        message: bytes,
        generation: int,
        retries: int = 0,
        fence: Fence | None = None,
    ) -> TransitionResult:
        """Wait for another attempt, the job's `retries`-th retry: `message` (of `generation`)
        is due `delay` seconds from now by Redis' clock.
        """
        fields = {"error": error, "generation": str(generation), "retries": str(retries)}
        return self._change(
            Verb.RETRY, job_id, message_op="add", delay=delay, message=message, fence=fence,
            fields=fields,
        )  # fmt: skip

    def succeed(self, job_id: str, result: str, fence: Fence | None = None) -> TransitionResult:
        """Record the result (JSON)."""
        fields = {"result": result, "error": "", "finished_at": repr(time.time())}
        return self._change(Verb.SUCCEED, job_id, fence=fence, fields=fields)

    def fail(self, job_id: str, error: str, fence: Fence | None = None) -> TransitionResult:
        """Record a failure (`error` is a JobError as JSON)."""
        fields = {"error": error, "finished_at": repr(time.time())}
        return self._change(Verb.FAIL, job_id, fence=fence, fields=fields)

    def dead_letter(
        self, job_id: str, error: str, message: bytes, fence: Fence | None = None
    ) -> TransitionResult:
        """Fail the job and keep `message` in the dead-letter set to replay it."""
        now = time.time()
        fields = {"error": error, "finished_at": repr(now), "dead_lettered_at": repr(now)}
        return self._change(
            Verb.DEAD_LETTER, job_id, message_op="dead", message=message, fence=fence,
            fields=fields,
        )  # fmt: skip

    def hand_back(self, job_id: str, fence: Fence | None = None) -> TransitionResult:
        """A worker shutting down gives a running job back: queued again, not a death."""
        return self._change(Verb.HAND_BACK, job_id, fence=fence, fields={"progress": ""})

    def callback_enqueued(self, job_id: str) -> None:
        """The job's completion callback is enqueued: no sweep needs to do it."""
        self.client.zrem(self.keys.callbacks_pending, job_id)

    def pending_callbacks(self, older_than_seconds: float, limit: int = 100) -> list[str]:
        """Jobs whose callback is still pending `older_than_seconds` after they finished (its
        enqueuer died, or Redis refused it), by Redis' clock.
        """
        seconds, micros = self.client.time()
        ceiling = (seconds + micros / 1e6 - older_than_seconds) * 1000
        ids = self.client.zrangebyscore(self.keys.callbacks_pending, "-inf", ceiling, 0, limit)
        return [text_of(i) for i in ids]

    def _change(self, verb: Verb, job_id: str, **kwargs: Any) -> TransitionResult:
        rule = transition(verb)
        expire = _calls.expiry_seconds(
            rule, self.retention_seconds, self.dead_letter_retention_seconds
        )
        args = _calls.transition_args(self.keys.prefix, job_id, rule, expire, **kwargs)
        return _calls.parse_transition(TRANSITION.run(self.client, args))

    # -- reading --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""
        return decode_record(self.client.hgetall(self.keys.job(job_id)))

    def run_finished(self, run_id: str, kind: str) -> bool:
        """Whether a job (`kind` job) or workflow has finished (or is gone: expired)."""
        if kind == "workflow":
            state = self.client.hget(self.keys.workflow(run_id), "state")
            return state is None or text_of(state) != WorkflowState.RUNNING
        job = self.get(run_id)
        return job is None or job.state.is_terminal
