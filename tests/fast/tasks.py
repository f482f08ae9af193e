"""Tasks of the fast layer, whose bodies call back into the test running them (the runner
runs in the test's own process, so a test can pause a job between two progress reports)."""

from collections.abc import Callable

from pydantic import Field

from conveyor.core.catalog import JobContext, TaskArgs, task
from conveyor.core.errors import RetryableError
from conveyor.core.queues import Queue


def _carry_on(job_id: str, step: int) -> None:
    pass


#: Called with (job id, step) after each progress report that returned; tests replace it.
after_step: Callable[[str, int], None] = _carry_on


class StepsArgs(TaskArgs):
    """Arguments of `fast.steps`."""

    steps: int = Field(3, ge=1, le=100)


@task(name="fast.steps", queue=Queue.DEFAULT, args=StepsArgs)
def steps(ctx: JobContext, args: StepsArgs) -> dict[str, int]:
    """Report progress `steps` times, calling `after_step` after each report."""
    for step in range(1, args.steps + 1):
        ctx.progress(step, args.steps, f"step {step}")
        after_step(ctx.job_id, step)
    return {"steps": args.steps}


class WorkerDied(SystemExit):
    """Escapes the runner as the end of its process does: the record is left `running`
    and the message is delivered again, as after a worker was killed."""


class DieArgs(TaskArgs):
    """Arguments of `fast.die`."""


@task(name="fast.die", queue=Queue.DEFAULT, args=DieArgs)
def die(ctx: JobContext, args: DieArgs) -> None:
    """Die under the runner, like a worker killed while running the job."""
    raise WorkerDied(ctx.job_id)


class LimitedArgs(TaskArgs):
    """Arguments of `fast.limited` and `fast.keyed`."""

    n: int = 0


@task(name="fast.limited", queue=Queue.DEFAULT, args=LimitedArgs, max_concurrency=2)
def limited(ctx: JobContext, args: LimitedArgs) -> int:
    """A task of which at most 2 jobs run at once (an external API's limit)."""
    return args.n


@task(name="fast.keyed", queue=Queue.DEFAULT, args=LimitedArgs, concurrency_key_limit=1)
def keyed(ctx: JobContext, args: LimitedArgs) -> int:
    """A task of which one job per concurrency key runs at once."""
    return args.n


@task(
    name="fast.keyed_flaky",
    queue=Queue.DEFAULT,
    args=LimitedArgs,
    max_concurrency=2,
    concurrency_key_limit=1,
)
def keyed_flaky(ctx: JobContext, args: LimitedArgs) -> int:
    """A limited task (2 at once, 1 per key) whose first attempt fails and is retried."""
    if ctx.attempt == 1:
        raise RetryableError("the first attempt fails")
    return args.n
