"""Tasks of the Sentinel fault tests (loaded through CONVEYOR_TASK_MODULES): each records its
executions and start times in a separate, standalone Redis that the faults never touch."""

import time

import redis
from pydantic import Field

from conveyor.core.catalog import JobContext, TaskArgs, task
from conveyor.core.queues import Queue


class RecordArgs(TaskArgs):
    """Where to record the execution (a Redis outside the Sentinel group)."""

    ledger_url: str
    seconds: float = Field(0.0, ge=0, le=60)


def _record(ctx: JobContext, args: RecordArgs) -> dict[str, int]:
    client = redis.Redis.from_url(args.ledger_url)
    try:
        pipe = client.pipeline()
        pipe.hincrby("executions", ctx.job_id, 1)
        pipe.hsetnx("started", ctx.job_id, repr(time.time()))
        pipe.rpush(f"starts:{ctx.job_id}", repr(time.time()))
        executions = int(pipe.execute()[0])
        if args.seconds:
            time.sleep(args.seconds)
        return {"executions": executions, "attempt": ctx.attempt}
    finally:
        client.close()


@task(name="sentinel.high", queue=Queue.HIGH, args=RecordArgs)
def record_high(ctx: JobContext, args: RecordArgs) -> dict[str, int]:
    """Record this execution (high tier)."""
    return _record(ctx, args)


@task(name="sentinel.default", queue=Queue.DEFAULT, args=RecordArgs)
def record_default(ctx: JobContext, args: RecordArgs) -> dict[str, int]:
    """Record this execution (default tier)."""
    return _record(ctx, args)


@task(name="sentinel.low", queue=Queue.LOW, args=RecordArgs)
def record_low(ctx: JobContext, args: RecordArgs) -> dict[str, int]:
    """Record this execution (low tier)."""
    return _record(ctx, args)
