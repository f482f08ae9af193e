"""`conveyor schedules ...`: list, create, pause, resume, trigger and delete schedules.

Exit codes as `conveyor jobs`: 0 done, 5 an API or connection error, 2 a usage error.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from conveyor.client.cli import DEFAULT_URL, ApiKey, Output, OutputOption, Url, out, session
from conveyor.core.schedules import Schedule

schedules_app = typer.Typer(help="Periodic runs: list, create, pause, resume, trigger, delete.",
                            no_args_is_help=True)  # fmt: skip
ScheduleId = Annotated[str, typer.Argument(help="The schedule's id (`sch_…`, `file.<name>`).")]


def _timing(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"{schedule.cron} ({schedule.timezone})"
    return f"every {schedule.interval_seconds:g} s"


def _show(schedule: Schedule, output: Output) -> None:
    if output is Output.JSON:
        out.print_json(schedule.model_dump_json())
        return
    table = Table(box=None, show_header=False)
    for name, value in [
        ("id", schedule.id), ("name", schedule.name), ("tenant", schedule.tenant),
        ("source", str(schedule.source)), ("runs", schedule.task or "a workflow"),
        ("timing", _timing(schedule)), ("paused", "yes" if schedule.paused else "no"),
        ("next runs", ", ".join(schedule.next_runs) or "-"),
        ("last run", f"{schedule.last_run_id or '-'} ({schedule.last_outcome or 'none yet'})"),
    ]:  # fmt: skip
        table.add_row(name, value)
    out.print(table)


@schedules_app.command("list")
def list_schedules(
    tenant: Annotated[str | None, typer.Option(help="Another tenant's (admin keys).")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """The caller's schedules (the schedule file's among them, read-only)."""
    with session(url, api_key) as client:
        found = client.schedules(tenant=tenant)
    if output is Output.JSON:
        out.print_json(json.dumps([s.model_dump(mode="json") for s in found]))
        return
    table = Table("id", "name", "source", "runs", "timing", "next run", "paused", box=None)
    for s in found:
        table.add_row(s.id, s.name, str(s.source), s.task or "workflow", _timing(s),
                      s.next_run_at or "-", "yes" if s.paused else "no")  # fmt: skip
    out.print(table)


@schedules_app.command("get")
def get_schedule(
    schedule_id: ScheduleId, url: Url = DEFAULT_URL, api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:  # fmt: skip
    """One schedule, its next runs and its last run."""
    with session(url, api_key) as client:
        _show(client.get_schedule(schedule_id), output)


@schedules_app.command("create")
def create_schedule(
    source: Annotated[str, typer.Argument(help="A JSON file of POST /v1/schedules's body, or -.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Create a schedule from a JSON body (name, task + args or workflow, cron + timezone or
    interval_seconds, overlap, catch_up, jitter_seconds).
    """
    try:
        body: Any = json.loads(sys.stdin.read() if source == "-" else Path(source).read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("the body must be a JSON object", param_hint="SOURCE")
    with session(url, api_key) as client:
        _show(client.create_schedule(body), output)


@schedules_app.command("pause")
def pause_schedule(
    schedule_id: ScheduleId, url: Url = DEFAULT_URL, api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:  # fmt: skip
    """No runs until resumed."""
    with session(url, api_key) as client:
        _show(client.pause_schedule(schedule_id), output)


@schedules_app.command("resume")
def resume_schedule(
    schedule_id: ScheduleId, url: Url = DEFAULT_URL, api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:  # fmt: skip
    """Run again from the next tick after now."""
    with session(url, api_key) as client:
        _show(client.resume_schedule(schedule_id), output)


@schedules_app.command("trigger")
def trigger_schedule(schedule_id: ScheduleId, url: Url = DEFAULT_URL,
                     api_key: ApiKey = None) -> None:  # fmt: skip
    """Start one run now; prints the job or workflow id."""
    with session(url, api_key) as client:
        run = client.trigger_schedule(schedule_id)
    out.print(run.get("job_id") or run.get("workflow_id") or "")


@schedules_app.command("delete")
def delete_schedule(schedule_id: ScheduleId, url: Url = DEFAULT_URL,
                    api_key: ApiKey = None) -> None:  # fmt: skip
    """No more runs (runs already started are not touched)."""
    with session(url, api_key) as client:
        client.delete_schedule(schedule_id)
    out.print(f"deleted {schedule_id}")
