"""A workflow as clients read it: its states, failure policies, and the resources the API
returns (`Workflow` with its steps, `WorkflowSummary` in listings), decoded from the records
the scripts write. No server code: the Python client uses these too.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, Field

from conveyor.core.queues import Queue
from conveyor.jobstore.model import JobError, JobState, Progress, text_of


class WorkflowState(StrEnum):
    """Where a workflow is: running until every step has finished, then its outcome."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailurePolicy(StrEnum):
    """What a step's failure does to the rest of its workflow."""

    # Nothing else starts: waiting steps are skipped at once, queued ones when reached.
    FAIL_FAST = "fail_fast"
    # Only the failed step's descendants are skipped; independent branches run on.
    CONTINUE = "continue"


@dataclass(frozen=True)
class WorkflowEnd:
    """How a workflow ended (a script's reply when a step's end ended it)."""

    outcome: WorkflowState
    seconds: float


class WorkflowStep(BaseModel):
    """One step of a workflow, as its job record says."""

    name: str
    job_id: str
    task: str
    queue: Queue
    state: JobState
    depends_on: list[str] = Field(default_factory=list, description="Its parents' names.")
    progress: Progress | None = None
    error: JobError | None = None
    result: Any = Field(None, description="The task's return value, once it succeeded.")
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None


class WorkflowSummary(BaseModel):
    """A workflow as listings return it: its counts, not its steps."""

    id: str
    tenant: str
    name: str | None = None
    state: WorkflowState
    failure_policy: FailurePolicy
    steps_total: int
    steps_done: int
    steps_succeeded: int
    steps_failed: int
    steps_cancelled: int = Field(..., description="Cancelled, or skipped by a failure.")
    idempotency_key: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class Workflow(WorkflowSummary):
    """A workflow as the API returns it: with every step, parents first."""

    steps: list[WorkflowStep]


# The workflow record's fields a summary is read from.
WORKFLOW_FIELDS = (
    *("id", "tenant", "name", "state", "policy", "steps", "done", "succeeded", "failed"),
    *("cancelled", "idempotency_key", "created_at", "finished_at"),
)
# A step's job record fields the workflow's resource shows.
STEP_FIELDS = ("id", "step", "task", "queue", "state", "parents", "progress", "error", "result",
               "attempts", "started_at", "finished_at")  # fmt: skip


def decode_summary(values: Sequence[Any]) -> WorkflowSummary | None:
    """A summary from HMGET of WORKFLOW_FIELDS (None when the workflow is unknown)."""
    if values[0] is None:
        return None
    r = dict(zip(WORKFLOW_FIELDS, (text_of(v) if v is not None else "" for v in values),
                 strict=True))  # fmt: skip
    return WorkflowSummary(
        id=r["id"], tenant=r["tenant"], name=r["name"] or None, state=WorkflowState(r["state"]),
        failure_policy=FailurePolicy(r["policy"]), steps_total=int(r["steps"] or 0),
        steps_done=int(r["done"] or 0), steps_succeeded=int(r["succeeded"] or 0),
        steps_failed=int(r["failed"] or 0), steps_cancelled=int(r["cancelled"] or 0),
        idempotency_key=r["idempotency_key"] or None, created_at=_time(r["created_at"]),
        finished_at=_time(r["finished_at"]) if r["finished_at"] else None,
    )  # fmt: skip


def decode_workflow(summary: WorkflowSummary, steps: Sequence[Sequence[Any]]) -> Workflow:
    """The workflow with its steps, from HMGET of STEP_FIELDS of each (in order); a step
    whose record is gone (it expired) is left out.
    """
    rows = [dict(zip(STEP_FIELDS, (text_of(v) if v is not None else "" for v in values),
                     strict=True)) for values in steps if values[0] is not None]  # fmt: skip
    names = {r["id"]: r["step"] for r in rows}
    return Workflow(
        **summary.model_dump(),
        steps=[
            WorkflowStep(
                name=r["step"], job_id=r["id"], task=r["task"], queue=Queue(r["queue"]),
                state=JobState(r["state"]),
                depends_on=[names.get(p, p) for p in orjson.loads(r["parents"] or "[]")],
                progress=orjson.loads(r["progress"]) if r["progress"] else None,
                error=orjson.loads(r["error"]) if r["error"] else None,
                result=orjson.loads(r["result"]) if r["result"] else None,
                attempts=int(r["attempts"] or 0),
                started_at=_time(r["started_at"]) if r["started_at"] else None,
                finished_at=_time(r["finished_at"]) if r["finished_at"] else None,
            )
            for r in rows
        ],
    )  # fmt: skip


def _time(raw: str) -> datetime:
    return datetime.fromtimestamp(float(raw), UTC)
