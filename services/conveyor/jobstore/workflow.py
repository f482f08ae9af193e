"""Workflows: a DAG of steps, each a job, accepted whole and run as their parents finish.

The validated plan and the records accept writes here (what clients read is
`workflow_model`); the scripts' half is `lua/_workflow.lua` (settling a step's end
in the same atomic step as the step's own transition), `lua/accept_workflow.lua` and
`lua/cancel_workflow.lua`. docs/workflows.md describes the model and its guarantees.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from conveyor.core.catalog import TaskSpec
from conveyor.core.ids import random_uuid
from conveyor.core.settings import WorkerSettings
from conveyor.jobstore.model import JobState
from conveyor.jobstore.submission import Submission, current_trace_context, prepare
from conveyor.jobstore.workflow_model import FailurePolicy

# Every parent's result, as a list in `depends_on` order (an input's source).
ALL_PARENTS = "*"


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
    workflow_id = random_uuid()
    trace = current_trace_context()  # one workflow, one trace: read once for every step
    prepared = {s.name: prepare(s.spec, s.submission, worker, now, trace) for s in plan.steps}
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
