"""`conveyor jobs ...` and `conveyor tasks`: the API from a terminal.

The server and key come from `--url`/`--api-key` or CONVEYOR_URL/CONVEYOR_API_KEY. The exit
code of a command that waits tells the job's fate: 0 succeeded, 1 failed, 3 cancelled,
4 the wait timed out; 5 is an API or connection error, 2 a usage error.
"""

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from conveyor.client._base import JobEvent, Retrying
from conveyor.client.errors import ConveyorError, TransportError, WaitTimeout
from conveyor.client.sync_client import Client
from conveyor.core.queues import Queue
from conveyor.jobstore.fairq import FlowKind
from conveyor.jobstore.listing import ListedJob
from conveyor.jobstore.model import Job, JobState, JobSummary

EXIT_FAILED, EXIT_CANCELLED, EXIT_TIMEOUT, EXIT_ERROR = 1, 3, 4, 5
STATE_EXIT = {
    JobState.SUCCEEDED: 0,
    JobState.FAILED: EXIT_FAILED,
    JobState.CANCELLED: EXIT_CANCELLED,
}


class Output(StrEnum):
    """How results are printed."""

    TEXT = "text"
    JSON = "json"


Url = Annotated[
    str, typer.Option("--url", envvar="CONVEYOR_URL", help="API base URL.", show_default=True)
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="CONVEYOR_API_KEY", help="API key.", show_default=False),
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="text, or json for scripts.")]
DEFAULT_URL = "http://127.0.0.1:8000"

jobs_app = typer.Typer(help="Submit, follow, list and cancel jobs.", no_args_is_help=True)
flow_app = typer.Typer(help="Pause and resume tiers, tasks and tenants (admin).",
                       no_args_is_help=True)  # fmt: skip
out = Console()
err = Console(stderr=True)


# A job id given shorter than this is a prefix, looked up among the newest jobs.
JOB_ID_LENGTH = 36
PREFIX_SEARCH_LIMIT = 1000


class AmbiguousJobId(ConveyorError):
    """A job id prefix that matches no recent job, or several."""


@contextmanager
def session(url: str, api_key: str | None) -> Iterator[Client]:
    """A client whose API and connection errors end the command with exit code 5 (and a
    connection error says where it tried, and how to point elsewhere). Each retry is said on
    stderr as it is decided: the retries of an unreachable API take seconds, never in silence.
    """
    with Client(url, api_key, on_retry=_say_retry) as client:
        try:
            yield client
        except TransportError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            err.print("is the platform running? (`make dev`; or --url / CONVEYOR_URL)")
            raise typer.Exit(EXIT_ERROR) from None
        except ConveyorError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(EXIT_ERROR) from None


def _say_retry(retrying: Retrying) -> None:
    err.print(f"[yellow]{retrying}[/yellow]", highlight=False)


def resolve_job_id(client: Client, given: str) -> str:
    """A whole job id, or the one id among the newest jobs that starts with `given`."""
    if len(given) >= JOB_ID_LENGTH:
        return given
    matches = []
    for seen, job in enumerate(client.list(page_size=500)):
        if seen >= PREFIX_SEARCH_LIMIT:
            break
        if job.id.startswith(given):
            matches.append(job.id)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AmbiguousJobId(
            f"no job id starts with {given!r} (among the {PREFIX_SEARCH_LIMIT} newest jobs)"
        )
    shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise AmbiguousJobId(f"{given!r} is the start of {len(matches)} job ids: {shown}")


def number(value: float) -> str:
    """A progress figure for people: at most two decimals, no exponent (3.51e-07 is 0)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _load_args(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        if raw == "@-":
            text = sys.stdin.read()
        elif raw.startswith("@"):
            text = Path(raw[1:]).read_text()
        else:
            text = raw
        value = json.loads(text)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--args") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("the arguments must be a JSON object", param_hint="--args")
    return value


def _print_job(job: Job, output: Output) -> None:
    if output is Output.JSON:
        out.print_json(job.model_dump_json())
        return
    table = Table.grid(padding=(0, 2))
    for name, value in (
        ("id", job.id),
        ("task", job.task),
        ("queue", str(job.queue)),
        ("state", styled_state(job.state)),
        ("attempts", str(job.attempts)),
        ("created", job.created_at.isoformat()),
        ("finished", job.finished_at.isoformat() if job.finished_at else "-"),
    ):
        table.add_row(f"[bold]{name}[/bold]", value)
    if job.progress is not None:
        progress = job.progress
        total = f"/{number(progress.total)}" if progress.total is not None else ""
        table.add_row(
            "[bold]progress[/bold]", f"{number(progress.current)}{total} {progress.message or ''}"
        )
    if job.error is not None:
        table.add_row("[bold]error[/bold]", f"[red]{job.error.type}: {job.error.message}[/red]")
    out.print(table)
    if job.result is not None:
        out.print_json(json.dumps(job.result))


def styled_state(state: str) -> str:
    """A job's or workflow's state, coloured by outcome."""
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}
    return f"[{colour.get(str(state), 'cyan')}]{state}[/]"


def _follow(client: Client, job_id: str, timeout: float | None, output: Output) -> int:
    """Wait for the job (a live progress bar on a terminal), print it, return the exit code."""
    show_bar = output is Output.TEXT and err.is_terminal
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not show_bar,
        transient=True,
    )
    bar = progress.add_task("queued", total=None, counts="")

    def on_event(event: JobEvent) -> None:
        state = event.state
        current = event.progress or {}
        message = current.get("message")
        done, total = current.get("current", 0), current.get("total")
        progress.update(
            bar,
            description=f"{state}{': ' + message if message else ''}",
            completed=done,
            total=total,
            counts=f"{number(done)}/{number(total)}" if total is not None else "",
        )

    try:
        with progress:
            job = client.wait(job_id, timeout=timeout, on_event=on_event)
    except WaitTimeout as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        return EXIT_TIMEOUT
    _print_job(job, output)
    return STATE_EXIT.get(job.state, EXIT_ERROR)


@jobs_app.command("submit")
def submit(
    task: Annotated[str, typer.Argument(help="Task name (see `conveyor tasks`).")],
    args: Annotated[
        str | None,
        typer.Option("--args", "-a", help="Arguments: a JSON object, @file.json or @- (stdin)."),
    ] = None,
    priority: Annotated[Queue | None, typer.Option(help="high, default or low.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Replays return the same job.")
    ] = None,
    delay: Annotated[
        float | None, typer.Option(help="Run no earlier than this many seconds.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow the job until it finishes.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Submit a job; with --wait, show its progress and exit with its outcome."""
    arguments = _load_args(args)
    with session(url, api_key) as client:
        job = client.submit(
            task,
            arguments,
            priority=str(priority) if priority else None,
            idempotency_key=idempotency_key,
            delay_seconds=delay,
        )
        if not wait:
            _print_job(job, output)
            return
        if output is Output.TEXT:
            err.print(f"submitted [bold]{job.id}[/bold] ({job.task} on {job.queue})")
        code = _follow(client, job.id, timeout, output)
    raise typer.Exit(code)


@jobs_app.command("submit-many")
def submit_many(
    source: Annotated[
        str,
        typer.Argument(help="JSON lines, one POST /v1/jobs body each: a file, or - (stdin)."),
    ],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Submit many jobs through POST /v1/jobs/batch (each accepted or refused on its own,
    each with an idempotency key, refusals for a moment retried); exit 1 if any was refused.
    """
    bodies = _load_bodies(source)
    with session(url, api_key) as client:
        outcomes = client.submit_many(bodies)
    refused = [(n, o) for n, o in enumerate(outcomes, 1) if not o.ok]
    if output is Output.JSON:
        out.print_json(json.dumps([
            {"line": n, "status": o.status, "id": o.job.id if o.job else None,
             "problem": o.problem} for n, o in enumerate(outcomes, 1)
        ]))  # fmt: skip
    else:
        out.print(f"{len(outcomes) - len(refused)} of {len(outcomes)} accepted")
        for n, outcome in refused:
            problem = outcome.problem or {}
            out.print(f"line {n}: {outcome.status} {problem.get('title', '')}: "
                      f"{problem.get('detail', '')}")  # fmt: skip
    if refused:
        raise typer.Exit(EXIT_FAILED)


def _load_bodies(source: str) -> list[dict[str, Any]]:
    """POST /v1/jobs bodies from JSON lines (blank lines skipped); a bad line is exit 5."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    bodies = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            err.print(f"[red]line {number} is not JSON: {exc}[/red]")
            raise typer.Exit(EXIT_ERROR) from None
        if not isinstance(body, dict):
            err.print(f"[red]line {number} is not a JSON object[/red]")
            raise typer.Exit(EXIT_ERROR)
        bodies.append(body)
    return bodies


JobId = Annotated[
    str, typer.Argument(help="Job id, or the start of one (among the newest 1000 jobs).")
]


@jobs_app.command("get")
def get(
    job_id: JobId,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Show a job: state, progress, result or error."""
    with session(url, api_key) as client:
        _print_job(client.get(resolve_job_id(client, job_id)), output)


@jobs_app.command("watch")
def watch(
    job_id: JobId,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Follow a job to its end with a live progress bar; exit with its outcome."""
    with session(url, api_key) as client:
        code = _follow(client, resolve_job_id(client, job_id), timeout, output)
    raise typer.Exit(code)


@jobs_app.command("list")
def list_jobs(
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    task: Annotated[str | None, typer.Option(help="Only jobs of this task.")] = None,
    queue: Annotated[Queue | None, typer.Option(help="Only jobs on this queue.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Another tenant's jobs (admin keys).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most jobs to show.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """List jobs, newest first (pages are fetched as needed)."""
    jobs: list[ListedJob] = []
    with session(url, api_key) as client:
        for job in client.list(
            state=str(state) if state else None,
            task=task,
            queue=str(queue) if queue else None,
            tenant=tenant,
            page_size=min(limit, 500),
        ):
            jobs.append(job)
            if len(jobs) >= limit:
                break
    if output is Output.JSON:
        out.print_json(json.dumps([job.model_dump(mode="json") for job in jobs]))
        return
    out.print(jobs_table(jobs, out.width))


def jobs_table(jobs: Sequence[JobSummary], width: int) -> Table:
    """Jobs with their whole ids, never cut: the columns that do not fit in `width` are
    left out, least useful first (created, attempts, queue).
    """
    rows = [
        {
            "id": job.id,
            "state": str(job.state),
            "task": job.task,
            "queue": str(job.queue),
            "attempts": str(job.attempts),
            "created": job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for job in jobs
    ]
    names = ["id", "state", "task", "queue", "attempts", "created"]

    def needed(columns: list[str]) -> int:
        widths = [max([len(name), *(len(row[name]) for row in rows)]) for name in columns]
        return sum(widths) + 2 * (len(columns) - 1)

    while len(names) > 3 and needed(names) > width:
        names.pop()
    columns = [Column(name, no_wrap=True) for name in names]
    table = Table(*columns, box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for row, job in zip(rows, jobs, strict=True):
        cells = {**row, "state": styled_state(job.state)}
        table.add_row(*(cells[name] for name in names))
    return table


@jobs_app.command("cancel")
def cancel(
    job_id: JobId,
    terminate: Annotated[bool, typer.Option(help="Kill a running job at once.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Cancel a job that has not finished."""
    with session(url, api_key) as client:
        _print_job(client.cancel(resolve_job_id(client, job_id), terminate=terminate), output)


FlowKindArg = Annotated[FlowKind, typer.Argument(help="tier, task or tenant.")]
FlowName = Annotated[str, typer.Argument(help="The tier, task or tenant name.")]


@flow_app.command("pause")
def pause(
    kind: FlowKindArg, name: FlowName, url: Url = DEFAULT_URL, api_key: ApiKey = None
) -> None:
    """Pause a tier, task or tenant: its jobs stay queued, running ones finish."""
    with session(url, api_key) as client:
        newly = client.pause(str(kind), name)
    out.print(f"paused {kind} {name}" if newly else f"{kind} {name} was already paused")


@flow_app.command("resume")
def resume(
    kind: FlowKindArg, name: FlowName, url: Url = DEFAULT_URL, api_key: ApiKey = None
) -> None:
    """Resume a paused tier, task or tenant: its jobs start again, oldest first."""
    with session(url, api_key) as client:
        client.resume(str(kind), name)
    out.print(f"resumed {kind} {name}")


@flow_app.command("list")
def paused(
    url: Url = DEFAULT_URL, api_key: ApiKey = None, output: OutputOption = Output.TEXT
) -> None:
    """Print what is paused."""
    with session(url, api_key) as client:
        found = client.paused()
    if output is Output.JSON:
        out.print_json(json.dumps([{"kind": kind, "name": name} for kind, name in found]))
        return
    for kind, name in found:
        out.print(f"{kind} {name}")
    if not found:
        out.print("nothing is paused")


def tasks(
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    output: OutputOption = Output.TEXT,
) -> None:
    """Print the task catalogue with each task's argument schema."""
    with session(url, api_key) as client:
        catalogue = client.tasks()
    if output is Output.JSON:
        out.print_json(json.dumps(catalogue))
        return
    for info in catalogue:
        out.rule(f"[bold]{info['name']}[/bold]  [dim]queue {info['queue']}[/dim]", align="left")
        if info.get("description"):
            out.print(info["description"])
        schema = info["args_schema"]
        required = set(schema.get("required", []))
        table = Table("argument", "type", "required", "description", box=None, pad_edge=False)
        for name, field in schema.get("properties", {}).items():
            table.add_row(name, _type_of(field), "yes" if name in required else "",
                          field.get("description", ""))  # fmt: skip
        out.print(table)


def _type_of(field: dict[str, Any]) -> str:
    if "type" in field:
        return str(field["type"]) + (f" ({field['format']})" if "format" in field else "")
    for key in ("anyOf", "oneOf", "allOf"):
        if key in field:
            return " | ".join(_type_of(option) for option in field[key])
    return "object" if "$ref" in field else "any"


__all__ = ["jobs_app", "tasks"]
