"""Workflows: a DAG of steps, each a job, accepted whole and run as their parents finish.

The model here (states, failure policies, the validated plan, the records accept writes and
the resource clients read); the scripts' half is `lua/_workflow.lua` (settling a step's end
in the same atomic step as the step's own transition), `lua/accept_workflow.lua` and
`lua/cancel_workflow.lua`. docs/workflows.md describes the model and its guarantees.
"""

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, Field

from conveyor.core.catalog import TaskSpec
from conveyor.core.queues import Queue
from conveyor.core.settings import WorkerSettings
from conveyor.jobstore.model import JobError, JobState, Progress, text_of
from conveyor.jobstore.submission import Submission, prepare

# Every parent's result, as a list in `depends_on` order (an input's source).
ALL_PARENTS = "*"


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


@dataclass(frozen=True)
class StepPlan:
    """One validated step: its job's submission (from `jobstore.submission`), its parents'
    names, and the arguments it takes from them (argument name -> parent name or '*').
    """

    name: str
    spec: TaskSpec
    submission: Submission
    depends_on: tuple[str, ...] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowPlan:
    """A validated workflow: its steps with parents before children."""

    tenant: str
    name: str | None
    policy: FailurePolicy
    steps: tuple[StepPlan, ...]
    idempotency_key: str | None = None

    def request_hash(self) -> str:
        """Fingerprint of the request, to tell a replay from a conflicting reuse of a key."""
        canonical = orjson.dumps(
            {
                "name": self.name,
                "policy": str(self.policy),
                "steps": [
                    {"name": s.name, "job": s.submission.request_hash(),
                     "depends_on": list(s.depends_on), "inputs": dict(s.inputs)}
                    for s in self.steps
                ],
            },
            option=orjson.OPT_SORT_KEYS,
        )  # fmt: skip
        return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class PreparedWorkflow:
    """What accept_workflow.lua writes: the workflow's record, and each step's record and
    message (parents first).
    """

    id: str
    record: dict[str, str]
    steps: list[tuple[dict[str, str], bytes]]
    request_hash: str


def prepare_workflow(
    plan: WorkflowPlan,
    worker: WorkerSettings,
    *,
    retention_seconds: int,
    dead_letter_retention_seconds: int,
    now: float,
) -> PreparedWorkflow:
    """The records and messages of `plan` (not yet written)."""
    workflow_id = str(uuid.uuid4())
    prepared = {s.name: prepare(s.spec, s.submission, worker, now) for s in plan.steps}
    ids = {name: job.id for name, (job, _) in prepared.items()}
    children: dict[str, list[str]] = {s.name: [] for s in plan.steps}
    for step in plan.steps:
        for parent in step.depends_on:
            children[parent].append(ids[step.name])
    steps = []
    for step in plan.steps:
        job, message = prepared[step.name]
        record = {
            **job.record,
            "state": str(JobState.WAITING if step.depends_on else JobState.QUEUED),
            "workflow": workflow_id,
            "step": step.name,
            "parents": orjson.dumps([ids[p] for p in step.depends_on]).decode(),
            "children": orjson.dumps(children[step.name]).decode(),
            "waiting_on": str(len(step.depends_on)),
        }
        if step.inputs:
            sources = {arg: src if src == ALL_PARENTS else ids[src]
                       for arg, src in step.inputs.items()}  # fmt: skip
            record["inputs"] = orjson.dumps(sources).decode()
        steps.append((record, message))
    request_hash = plan.request_hash()
    record = {
        "id": workflow_id,
        "tenant": plan.tenant,
        "name": plan.name or "",
        "policy": str(plan.policy),
        "order": orjson.dumps([ids[s.name] for s in plan.steps]).decode(),
        "created_at": repr(now),
        "finished_at": "",
        "idempotency_key": plan.idempotency_key or "",
        "request_hash": request_hash,
        "retention": str(retention_seconds),
        "dead_retention": str(dead_letter_retention_seconds),
    }
    return PreparedWorkflow(workflow_id, record, steps, request_hash)


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
