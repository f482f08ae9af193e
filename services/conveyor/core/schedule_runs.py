"""What one run of a schedule submits: a job (its task's spec and submission) or a workflow
(its plan), with the run's idempotency key. Beat's ticks and the API's trigger share it.
"""

from dataclasses import dataclass

from conveyor.core.catalog import TaskCatalog, TaskSpec
from conveyor.core.queues import Queue
from conveyor.core.schedules import RUN_KEY, ScheduleDefinition
from conveyor.core.settings import Settings
from conveyor.core.workflow_plan import plan_of
from conveyor.jobstore.submission import Submission
from conveyor.jobstore.workflow import WorkflowPlan


class UnknownTaskError(ValueError):
    """The schedule's task is not in this deployment's catalogue (any more)."""


@dataclass(frozen=True)
class ScheduleRun:
    """One run: a job (`spec` and `submission`) or a workflow (`plan`)."""

    spec: TaskSpec | None = None
    submission: Submission | None = None
    plan: WorkflowPlan | None = None

    @property
    def kind(self) -> str:
        """`job` or `workflow`."""
        return "workflow" if self.plan is not None else "job"


def run_key(schedule_id: str, tick_ms: int | str) -> str:
    """The idempotency key of a schedule's run for a tick (ms) or a manual run's id."""
    return RUN_KEY.format(schedule_id=schedule_id, tick=tick_ms)


def schedule_run(definition: ScheduleDefinition, tenant: str, catalog: TaskCatalog,
                 settings: Settings, key: str) -> ScheduleRun:  # fmt: skip
    """The run `definition` submits for `tenant` under idempotency `key`. Raises
    UnknownTaskError, pydantic's ValidationError (arguments) or InvalidWorkflowError.
    """
    if definition.workflow is not None:
        return ScheduleRun(plan=plan_of(definition.workflow, catalog, settings, tenant, key))
    if definition.task is None or definition.task not in catalog:
        raise UnknownTaskError(f"unknown task {definition.task!r}")
    spec = catalog[definition.task]
    args = spec.args_model.model_validate(definition.args).model_dump(mode="json")
    submission = Submission.of(
        spec,
        tenant=tenant,
        args=args,
        priority=Queue(definition.queue) if definition.queue else None,
        idempotency_key=key,
    )
    return ScheduleRun(spec=spec, submission=submission)
