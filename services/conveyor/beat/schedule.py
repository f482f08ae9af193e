"""The schedule file (`CONVEYOR_SCHEDULE_FILE`): periodic jobs in YAML.

Example (cron fields are minute, hour, day of month, month, day of week, in UTC)::

schedules:
  - name: nightly-digest
    task: email.send
    args: {to: [ops@example.com], subject: Digest, text: "..."}
    cron: "0 3 * * *"
  - name: ping
    task: demo.echo
    interval_seconds: 60
    queue: high    # optional; defaults to the task's queue
    tenant: ops    # optional; the tenant that owns (and may read) the runs; default `system`
  - name: hourly-report         # a workflow instead of a task: POST /v1/workflows's body
    cron: "0 * * * *"
    workflow:
      chord:
        parallel: [{task: demo.square, args: {x: 2}}, {task: demo.square, args: {x: 3}}]
        then: {task: demo.sum, inputs: {values: "*"}}
"""

from pathlib import Path
from typing import Any, Self

import yaml
from celery.schedules import BaseSchedule, crontab, schedule
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.core.apikeys import SYSTEM_TENANT, TenantName
from conveyor.core.catalog import TaskCatalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.workflow_plan import InvalidWorkflowError, WorkflowRequest, plan_of

# The task name of a schedule entry that starts a workflow (no task has it: names have a dot
# only after a module, and the scheduler recognises it before looking a task up).
WORKFLOW_ENTRY = "conveyor:workflow"


class ScheduledJob(BaseModel):
    """One periodic job."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    task: str | None = Field(None, description="The task of each run (or `workflow`).")
    args: dict[str, Any] = Field(default_factory=dict)
    workflow: WorkflowRequest | None = Field(
        None, description="A workflow started by each run, as POST /v1/workflows takes it."
    )
    cron: str | None = Field(None, description="Five-field cron expression, in UTC.")
    interval_seconds: float | None = Field(None, gt=0)
    queue: Queue | None = Field(None, description="Queue tier; defaults to the task's own.")
    tenant: TenantName | None = Field(
        None, description="Tenant that owns the runs; defaults to `system`."
    )

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str | None) -> str | None:
        if value is not None:
            fields = value.split()
            if len(fields) != 5:
                raise ValueError("cron needs five fields: minute hour day month weekday")
            crontab(*fields)  # raises on a malformed field
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> Self:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError(f"{self.name}: set exactly one of cron and interval_seconds")
        if (self.task is None) == (self.workflow is None):
            raise ValueError(f"{self.name}: set exactly one of task and workflow")
        if self.workflow is not None and (self.args or self.queue):
            raise ValueError(f"{self.name}: a workflow's steps carry their own args and queues")
        return self

    def celery_schedule(self) -> BaseSchedule:
        """The Celery schedule object."""
        if self.cron is not None:
            minute, hour, day_of_month, month, day_of_week = self.cron.split()
            return crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month,
                day_of_week=day_of_week,
            )
        assert self.interval_seconds is not None
        return schedule(run_every=self.interval_seconds)


class ScheduleFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    schedules: list[ScheduledJob] = Field(default_factory=list)


def load_schedule(
    path: Path, catalog: TaskCatalog, settings: Settings | None = None
) -> list[ScheduledJob]:
    """Read and check the file: unique names, known tasks, arguments valid for each task,
    and each workflow valid as the API would take it.
    """
    data = yaml.safe_load(path.read_text()) or {}
    jobs = ScheduleFile.model_validate(data).schedules
    names = [job.name for job in jobs]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: schedule names must be unique")
    for job in jobs:
        if job.workflow is not None:
            try:
                plan_of(job.workflow, catalog, settings or Settings(), SYSTEM_TENANT, None)
            except InvalidWorkflowError as exc:
                raise ValueError(f"{path}: {job.name}: {exc}") from None
            continue
        if job.task is None or job.task not in catalog:
            raise ValueError(f"{path}: {job.name}: unknown task {job.task!r}")
        catalog[job.task].args_model.model_validate(job.args)
    return jobs


def beat_schedule(jobs: list[ScheduledJob]) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` setting for the jobs (a workflow's entry names
    WORKFLOW_ENTRY as its task and carries the workflow as its arguments).
    """
    return {
        job.name: {
            "task": job.task or WORKFLOW_ENTRY,
            "schedule": job.celery_schedule(),
            "kwargs": job.args if job.workflow is None else job.workflow.model_dump(mode="json"),
            "options": {
                **({"queue": str(job.queue)} if job.queue else {}),
                **({"tenant": job.tenant} if job.tenant else {}),
            },
        }
        for job in jobs
    }
