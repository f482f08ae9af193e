"""`conveyor workflows ...`: submit, follow, list and cancel workflows from a terminal.

Exit codes as `conveyor jobs`: 0 the workflow succeeded, 1 failed, 3 cancelled, 4 the wait
timed out, 5 an API or connection error, 2 a usage error.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from conveyor.client._base import WorkflowEvent
from conveyor.client.cli import (
    DEFAULT_URL,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    ApiKey,
    Output,
    OutputOption,
    Url,
    err,
    out,
    session,
    styled_state,
)
from conveyor.client.errors import WaitTimeout
from conveyor.client.sync_client import Client
from conveyor.jobstore.workflow_model import Workflow, WorkflowState

workflows_app = typer.Typer(help="Submit, follow, list and cancel workflows.",
                            no_args_is_help=True)  # fmt: skip

WORKFLOW_EXIT = {
    WorkflowState.SUCCEEDED: 0,
    WorkflowState.FAILED: EXIT_FAILED,
    WorkflowState.CANCELLED: EXIT_CANCELLED,
}
WorkflowId = Annotated[str, typer.Argument(help="The workflow's id.")]


def _load_workflow(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        body = json.loads(text)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="WORKFLOW") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("the workflow must be a JSON object", param_hint="WORKFLOW")
    return body


def print_workflow(workflow: Workflow, output: Output) -> None:
    """The workflow and a line per step (or its JSON)."""
    if output is Output.JSON:
        out.print_json(workflow.model_dump_json())
        return
    head = Table.grid(padding=(0, 2))
    for name, value in (
        ("id", workflow.id),
        ("name", workflow.name or "-"),
        ("state", styled_state(workflow.state)),
        ("steps", f"{workflow.steps_done}/{workflow.steps_total} done, "
                  f"{workflow.steps_succeeded} succeeded, {workflow.steps_failed} failed, "
                  f"{workflow.steps_cancelled} cancelled or skipped"),
        ("created", workflow.created_at.isoformat()),
        ("finished", workflow.finished_at.isoformat() if workflow.finished_at else "-"),
    ):  # fmt: skip
        head.add_row(f"[bold]{name}[/bold]", value)
    out.print(head)
    steps = Table("step", "task", "state", "after", "result or error", box=None)
    for step in workflow.steps:
        outcome = ""
        if step.error is not None:
            outcome = f"[red]{step.error.type}: {step.error.message}[/red]"
        elif step.result is not None:
            outcome = json.dumps(step.result)[:60]
        steps.add_row(step.name, step.task, styled_state(step.state),
                      ", ".join(step.depends_on) or "-", outcome)  # fmt: skip
    out.print(steps)


def follow_workflow(
    client: Client, workflow: Workflow, timeout: float | None, output: Output
) -> int:
    """Wait for the workflow (a live bar over its steps on a terminal), print it, and return
    the exit code of its outcome.
    """
    show_bar = output is Output.TEXT and err.is_terminal
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not show_bar,
        transient=True,
    )
    bar = progress.add_task("running", total=workflow.steps_total)
    finished: dict[str, str] = {}

    def on_event(event: WorkflowEvent) -> None:
        if event.event == "workflow":
            progress.update(bar, completed=event.data.get("steps_done", 0))
            return
        if event.event == "step":
            state = event.data["state"]
            if state in ("succeeded", "failed", "cancelled"):
                finished[event.data["step"]] = state
            progress.update(bar, completed=len(finished),
                            description=f"{event.data['step']} {state}")  # fmt: skip

    try:
        with progress:
            done = client.wait_workflow(workflow.id, timeout=timeout, on_event=on_event)
    except WaitTimeout as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        return EXIT_TIMEOUT
    print_workflow(done, output)
    return WORKFLOW_EXIT.get(done.state, EXIT_ERROR)


@workflows_app.command("submit")
def submit(
    source: Annotated[
        str,
        typer.Argument(
            help="The POST /v1/workflows body (steps, chain or chord) as JSON: a "
            "file, or - (stdin)."
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow the workflow until it ends.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Submit a workflow; with --wait, show its steps' progress and exit with its outcome."""
    body = _load_workflow(source)
    with session(url, api_key) as client:
        workflow = client.submit_workflow(body)
        if not wait:
            print_workflow(workflow, output)
            return
        if output is Output.TEXT:
            err.print(f"submitted [bold]{workflow.id}[/bold] ({workflow.steps_total} steps)")
        code = follow_workflow(client, workflow, timeout, output)
    raise typer.Exit(code)


@workflows_app.command("get")
def get(
    workflow_id: WorkflowId, url: Url = DEFAULT_URL, api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:  # fmt: skip
    """Show a workflow and its steps."""
    with session(url, api_key) as client:
        print_workflow(client.get_workflow(workflow_id), output)


@workflows_app.command("watch")
def watch(
    workflow_id: WorkflowId,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Follow a workflow until it ends; exit with its outcome."""
    with session(url, api_key) as client:
        code = follow_workflow(client, client.get_workflow(workflow_id), timeout, output)
    raise typer.Exit(code)


@workflows_app.command("list")
def list_workflows(
    state: Annotated[
        WorkflowState | None, typer.Option(help="Only workflows in this state.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Another tenant's (admin keys).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most workflows to show.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """The newest workflows."""
    with session(url, api_key) as client:
        found = []
        for workflow in client.list_workflows(state=state, tenant=tenant,
                                              page_size=min(limit, 500)):  # fmt: skip
            found.append(workflow)
            if len(found) >= limit:
                break
    if output is Output.JSON:
        out.print_json(json.dumps([w.model_dump(mode="json") for w in found]))
        return
    table = Table("id", "name", "state", "steps", "created", box=None)
    for w in found:
        table.add_row(w.id, w.name or "-", styled_state(w.state),
                      f"{w.steps_done}/{w.steps_total}", w.created_at.isoformat())  # fmt: skip
    out.print(table)


@workflows_app.command("cancel")
def cancel(
    workflow_id: WorkflowId,
    terminate: Annotated[bool, typer.Option(help="Kill running steps at once.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Cancel every step of a workflow that has not finished."""
    with session(url, api_key) as client:
        print_workflow(client.cancel_workflow(workflow_id, terminate=terminate), output)


@workflows_app.command("rerun")
def rerun(
    workflow_id: WorkflowId,
    step: Annotated[str, typer.Argument(help="The failed step's name.")],
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow the workflow until it ends.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Run a failed step again; the workflow resumes from it."""
    with session(url, api_key) as client:
        workflow = client.rerun_step(workflow_id, step)
        if not wait:
            print_workflow(workflow, output)
            return
        code = follow_workflow(client, workflow, timeout, output)
    raise typer.Exit(code)
