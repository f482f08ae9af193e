"""The schedule file (`CONVEYOR_SCHEDULE_FILE`): the platform's own periodic jobs, in YAML.

Beat's leader writes its entries into the schedule store as read-only `file` schedules (id
`file.<name>`), beside those created through /v1/schedules, and runs both alike. Example::

schedules:
  - name: nightly-digest
    task: email.send
    args: {to: [ops@example.com], subject: Digest, text: "..."}
    cron: "0 3 * * *"
    timezone: Europe/Paris   # optional; cron is read in this zone (default UTC)
  - name: ping
    task: demo.echo
    interval_seconds: 60
    queue: high    # optional; defaults to the task's queue
    tenant: ops    # optional; the tenant that owns (and may read) the runs; default `system`
    overlap: skip  # optional; `allow` (default) or `skip` while the last run is unfinished
  - name: hourly-report         # a workflow instead of a task: POST /v1/workflows's body
    cron: "0 * * * *"
    workflow:
      chord:
        parallel: [{task: demo.square, args: {x: 2}}, {task: demo.square, args: {x: 3}}]
        then: {task: demo.sum, inputs: {values: "*"}}
"""

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conveyor.core.apikeys import SYSTEM_TENANT, TenantName
from conveyor.core.catalog import TaskCatalog
from conveyor.core.schedule_runs import UnknownTaskError, run_key, schedule_run
from conveyor.core.schedules import ScheduleDefinition
from conveyor.core.settings import Settings
from conveyor.core.workflow_plan import InvalidWorkflowError
from conveyor.jobstore.schedule_store import FILE_ID


class FileSchedule(ScheduleDefinition):
    """One entry of the schedule file: a definition and the tenant that owns its runs."""

    tenant: TenantName = Field(
        SYSTEM_TENANT, description="Tenant that owns the runs; defaults to `system`."
    )

    @property
    def id(self) -> str:
        """Its id in the schedule store."""
        return FILE_ID.format(name=self.name)

    def definition(self) -> ScheduleDefinition:
        """The definition without the tenant (which the store keeps apart)."""
        return ScheduleDefinition.model_validate(self.model_dump(exclude={"tenant"}))


class ScheduleFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    schedules: list[FileSchedule] = Field(default_factory=list)


def load_schedule(
    path: Path, catalog: TaskCatalog, settings: Settings | None = None
) -> list[FileSchedule]:
    """Read and check the file: unique names, known tasks, arguments valid for each task,
    and each workflow valid as the API would take it.
    """
    data = yaml.safe_load(path.read_text()) or {}
    entries = ScheduleFile.model_validate(data).schedules
    names = [entry.name for entry in entries]
    if len(names) != len(set(names)):
        raise ValueError(f"{path}: schedule names must be unique")
    for entry in entries:
        try:
            schedule_run(entry, entry.tenant, catalog, settings or Settings(), run_key(entry.id, 0))
        except (UnknownTaskError, InvalidWorkflowError, ValidationError) as exc:
            raise ValueError(f"{path}: {entry.name}: {exc}") from None
    return entries
