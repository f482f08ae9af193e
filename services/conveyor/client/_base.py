"""What the sync and async clients share: requests, retry decisions, decoding."""

import random
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from conveyor import __version__
from conveyor.client.errors import WaitTimeout, retry_after
from conveyor.jobstore.model import Job
from conveyor.jobstore.workflow_model import Workflow

RETRIED_STATUSES = frozenset({429, 503})
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of a job: `job` (the whole job), `state` or `progress`."""

    id: str
    event: str
    data: dict[str, Any]

    @property
    def state(self) -> str:
        """The job's state at this event."""
        state: str = self.data["state"]
        return state

    @property
    def progress(self) -> dict[str, Any] | None:
        """The job's progress at this event ({current, total, message}), if any."""
        progress: dict[str, Any] | None = self.data.get("progress")
        return progress

    @property
    def is_terminal(self) -> bool:
        """The job finished: this is the last event, and `job()` has its result or error."""
        return self.event == "job" and self.state in TERMINAL

    def job(self) -> Job:
        """The job carried by a `job` event."""
        return Job.model_validate(self.data)


@dataclass(frozen=True)
class WorkflowEvent:
    """One Server-Sent Event of a workflow: `workflow` (the whole workflow), `step` (a step's
    state changed) or `progress` (a step reported progress); a step's carry `step`, `job_id`,
    `state`, `attempts` and `progress`.
    """

    id: str
    event: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        """The workflow ended: this is the last event, and `workflow()` has every step."""
        return self.event == "workflow" and self.data["state"] in TERMINAL

    def workflow(self) -> Workflow:
        """The workflow carried by a `workflow` event."""
        return Workflow.model_validate(self.data)


def workflow_body(workflow: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /v1/workflows body, with an idempotency key (a random one unless given), so
    retrying it after a lost response can never create a second workflow.
    """
    key = workflow.get("idempotency_key") or f"client-{uuid.uuid4()}"
    return {**workflow, "idempotency_key": key}


def workflow_list_params(state: str | None, tenant: str | None, limit: int) -> dict[str, Any]:
    """Query parameters of GET /v1/workflows."""
    params = {"state": state, "tenant": tenant, "limit": limit}
    return {name: value for name, value in params.items() if value is not None}


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429/503 (honouring Retry-After) and of connection failures."""

    max_retries: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry `attempt` (1-based): Retry-After, or backoff with jitter."""
        if response is not None:
            hinted = retry_after(response)
            if hinted is not None:
                return min(hinted, self.max_backoff_seconds)
        backoff = min(self.max_backoff_seconds, self.backoff_seconds * 2.0 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)  # noqa: S311 - jitter


@dataclass(frozen=True)
class Retrying:
    """A request about to be tried again (what a client's `on_retry` hook is given): what
    failed and why, which retry comes next, and in how many seconds. Its text says so in
    one line, for a user left waiting.
    """

    base_url: str
    what: str
    reason: str
    attempt: int
    max_retries: int
    delay: float

    def __str__(self) -> str:
        return (f"{self.what} at {self.base_url}: {self.reason}; "
                f"retry {self.attempt}/{self.max_retries} in {self.delay:.1f} s")  # fmt: skip


def failure_reason(failure: Exception | httpx.Response | str) -> str:
    """Why a try failed: the connection error, the refusing status, or a reason given."""
    if isinstance(failure, str):
        return failure
    if isinstance(failure, httpx.Response):
        return f"{failure.status_code} {failure.reason_phrase}".strip()
    return str(failure) or type(failure).__name__


def refused_in_batch(outcomes: "Sequence[BatchOutcome | None]", retry: Collection[int]) -> str:
    """Why a batch's submissions at `retry` are sent again: the statuses that refused them."""
    statuses = sorted({refused.status for i in retry if (refused := outcomes[i])})
    return "refused with " + ", ".join(map(str, statuses))


@dataclass(frozen=True)
class Options:
    """Connection settings common to both clients."""

    base_url: str
    api_key: str | None = None
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_retry: Callable[[Retrying], None] | None = None

    def retrying(
        self, what: str, failure: Exception | httpx.Response | str, attempt: int, delay: float
    ) -> None:
        """Tell `on_retry` that retry `attempt` of `what` comes in `delay` seconds."""
        if self.on_retry is not None:
            reason = failure_reason(failure)
            self.on_retry(Retrying(self.base_url, what, reason, attempt,
                                   self.retry.max_retries, delay))  # fmt: skip

    def headers(self) -> dict[str, str]:
        """Headers of every request."""
        headers = {"User-Agent": f"conveyor-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def submission_body(
    task: str,
    args: Mapping[str, Any] | None,
    *,
    priority: str | None,
    idempotency_key: str | None,
    delay_seconds: float | None,
    max_retries: int | None,
    timeout_seconds: int | None,
    callback_url: str | None,
    concurrency_key: str | None = None,
    unique: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The POST /v1/jobs body. Every submission carries an idempotency key (a random one
    unless given), so retrying it after a lost response can never create a second job.
    """
    body: dict[str, Any] = {
        "task": task,
        "args": dict(args or {}),
        "idempotency_key": idempotency_key or f"client-{uuid.uuid4()}",
    }
    optional = {
        "priority": priority,
        "delay_seconds": delay_seconds,
        "max_retries": max_retries,
        "timeout_seconds": timeout_seconds,
        "callback_url": callback_url,
        "concurrency_key": concurrency_key,
        "unique": dict(unique) if unique is not None else None,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


@dataclass(frozen=True)
class BatchOutcome:
    """One submission's answer in a batch: its job (`status` 202 new, 200 a replay of its
    idempotency key) or its problem (422, 409, or a 429/503 still refused after retries).
    """

    status: int
    job: Job | None
    problem: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        """Whether the job is accepted (new or already there)."""
        return self.job is not None


# Most submissions per POST /v1/jobs/batch the clients send (the server's default limit is 1000).
BATCH_SIZE = 500


def batch_bodies(submissions: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each submission as POST /v1/jobs takes it, with an idempotency key (a random one unless
    given): a batch retried after a lost response never creates a job twice.
    """
    return [
        {**item, "idempotency_key": item.get("idempotency_key") or f"client-{uuid.uuid4()}"}
        for item in submissions
    ]


def batch_outcomes(payload: Mapping[str, Any]) -> list[BatchOutcome]:
    """Decode a POST /v1/jobs/batch answer."""
    return [
        BatchOutcome(
            item["status"],
            Job.model_validate(item["job"]) if item.get("job") else None,
            item.get("problem"),
        )
        for item in payload["items"]
    ]


def list_params(
    state: str | None,
    task: str | None,
    queue: str | None,
    tenant: str | None,
    limit: int,
    fields: Collection[str] = (),
) -> dict[str, Any]:
    """Query parameters of GET /v1/jobs."""
    params = {"state": state, "task": task, "queue": queue, "tenant": tenant, "limit": limit,
              "fields": ",".join(sorted(fields)) or None}  # fmt: skip
    return {name: value for name, value in params.items() if value is not None}


def unreachable(base_url: str, what: str, exc: Exception) -> str:
    """The message of a connection failure: where it tried to connect, and what failed."""
    reason = str(exc) or type(exc).__name__
    return f"cannot reach the API at {base_url} ({what}: {reason})"


# The API sends a keep-alive comment every 15 s: a silence this long means a dead connection.
STREAM_READ_TIMEOUT = 45.0


def stream_timeout(timeout: float, deadline: float | None, job_id: str) -> httpx.Timeout:
    """Timeouts of one event-stream connection: reads end by `deadline` (raising WaitTimeout
    once it has passed), so waiting honours its timeout even on a quiet job.
    """
    read = STREAM_READ_TIMEOUT
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(job_id)
        read = min(read, left)
    return httpx.Timeout(timeout, read=read)
