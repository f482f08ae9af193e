"""Demonstration tasks for tours, load tests and fault tests."""

import time
from typing import Any, Literal

from pydantic import Field

from conveyor.core.catalog import JobContext, RetryPolicy, TaskArgs, task
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.queues import Queue


class SleepArgs(TaskArgs):
    """Arguments of `demo.sleep`."""

    seconds: float = Field(..., ge=0, le=3600, description="How long to sleep.")


@task(name="demo.sleep", queue=Queue.LOW, args=SleepArgs)
def sleep(ctx: JobContext, args: SleepArgs) -> dict[str, float]:
    """Sleep for `seconds`, reporting progress every second."""
    deadline = time.monotonic() + args.seconds
    while (remaining := deadline - time.monotonic()) > 0:
        ctx.progress(args.seconds - remaining, args.seconds, f"{remaining:.0f}s left")
        time.sleep(min(1.0, remaining))
    ctx.progress(args.seconds, args.seconds, "done")
    return {"slept": args.seconds}


class EchoArgs(TaskArgs):
    """Arguments of `demo.echo`."""

    payload: Any = Field(None, description="Any JSON value; returned as the result.")


@task(name="demo.echo", queue=Queue.DEFAULT, args=EchoArgs)
def echo(ctx: JobContext, args: EchoArgs) -> dict[str, Any]:
    """Return the payload unchanged."""
    return {"payload": args.payload}


class FailArgs(TaskArgs):
    """Arguments of `demo.fail`."""

    mode: Literal["retryable", "permanent"] = Field(
        "permanent", description="Raise a retryable or a permanent error."
    )
    succeed_on_attempt: int | None = Field(
        None, ge=1, description="Succeed instead once the job reaches this attempt."
    )
    message: str = Field("demo failure", max_length=1000)


@task(
    name="demo.fail",
    queue=Queue.DEFAULT,
    args=FailArgs,
    retry=RetryPolicy(max_retries=3, backoff_seconds=0.5, max_backoff_seconds=5.0),
)
def fail(ctx: JobContext, args: FailArgs) -> dict[str, int]:
    """Fail on purpose (or succeed from a given attempt on), to show retries and failures."""
    if args.succeed_on_attempt is not None and ctx.attempt >= args.succeed_on_attempt:
        return {"succeeded_on_attempt": ctx.attempt}
    if args.mode == "retryable":
        raise RetryableError(args.message)
    raise PermanentError(args.message)


class SquareArgs(TaskArgs):
    """Arguments of `demo.square`."""

    x: float = Field(..., description="The number to square.")


@task(name="demo.square", queue=Queue.DEFAULT, args=SquareArgs)
def square(ctx: JobContext, args: SquareArgs) -> float:
    """Return x squared: a step whose result the next one takes (workflows)."""
    return args.x * args.x


class SumArgs(TaskArgs):
    """Arguments of `demo.sum`."""

    values: list[float] = Field(..., max_length=10_000, description="The numbers to add.")


@task(name="demo.sum", queue=Queue.DEFAULT, args=SumArgs)
def sum_values(ctx: JobContext, args: SumArgs) -> float:
    """Return the sum of `values`: a fan-in step taking every parent's result."""
    return sum(args.values)
