"""What the job store's verbs answer: typed results, never bare strings."""

from dataclasses import dataclass
from enum import StrEnum

from conveyor.core.values import value
from conveyor.jobstore.listing import ListedJob
from conveyor.jobstore.model import Job, JobState
from conveyor.jobstore.workflow_model import WorkflowEnd


@dataclass(frozen=True)
class Limits:
    """What accept enforces besides atomicity: the tenant's bucket and queue depths."""

    rate_per_second: float = 0.0
    burst: int = 1
    max_queue_depth: int = 0
    max_delayed_jobs: int = 0
    # The tenant's fair-share weight within its tier (claims it gets relative to others).
    weight: float = 1.0
    # The tenant's own concurrency limit per tier (None: the deployment's), kept in Redis for
    # the claims.
    concurrency_per_tier: int | None = None
    # The tenant's own quotas (0: none): messages waiting per tier, delayed messages, and the
    # bytes of both.
    max_queued_per_tier: int = 0
    max_delayed_per_tenant: int = 0
    max_bytes: int = 0


class AcceptVerdict(StrEnum):
    """How a submission was answered."""

    CREATED = "created"
    EXISTING = "existing"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"
    # The tenant's own quota (queued per tier, delayed, bytes) would be exceeded.
    QUOTA_EXCEEDED = "quota_exceeded"
    # Recorded on the primary, but too few replicas confirmed it in time (replicated
    # acknowledgement): not acknowledged; a retry under the same idempotency key finds it.
    NOT_REPLICATED = "not_replicated"
    # Redis refused this one call of a batch (say, OOM or a failover under way); nothing of
    # this job was written (the accept script is atomic), the rest of the batch stands.
    BROKER_ERROR = "broker_error"


@dataclass(frozen=True)
class Quota:
    """A tenant's quota a submission would exceed: `queued` (per tier), `delayed` or `bytes`,
    and its value.
    """

    name: str
    limit: int


@value
class AcceptResult:
    """What accept did: created a job, found the idempotency key's job (the same request, or
    a CONFLICT: another request under the same key), or refused.

    `job_id` is set for CREATED, EXISTING and CONFLICT; `job` (as accepted) and `tokens_left`
    for CREATED; `retry_after_ms` for RATE_LIMITED; `depth` for QUEUE_FULL; `quota` for
    QUOTA_EXCEEDED; `replicas` (those that confirmed) for NOT_REPLICATED.
    """

    verdict: AcceptVerdict
    job_id: str = ""
    job: Job | None = None
    tokens_left: int = 0
    retry_after_ms: int = 0
    depth: int = 0
    replicas: int = 0
    quota: Quota | None = None

    @property
    def created(self) -> bool:
        """A new job was recorded and enqueued."""
        return self.verdict is AcceptVerdict.CREATED


@dataclass(frozen=True)
class TransitionResult:
    """What a state change did; `previous_state` is None when the job does not exist.

    `callback_pending`: the job finished with a completion callback to enqueue. `stale`: the
    write came from a run that is no longer the job's current attempt, and was refused.
    `unrecorded`: refused because the record never counted the run's attempt (its start was
    lost with a failover): the run's message must go back to the queue, not be acked.
    """

    applied: bool
    previous_state: JobState | None
    attempts: int
    callback_pending: bool = False
    stale: bool = False
    unrecorded: bool = False
    # The job was a workflow's last step to finish: the workflow's outcome and duration.
    workflow_ended: WorkflowEnd | None = None


@dataclass(frozen=True)
class Page:
    """One page of a job listing, newest first."""

    jobs: list[ListedJob]
    next_cursor: str | None


class InvalidCursorError(ValueError):
    """A listing cursor that this server did not issue."""
