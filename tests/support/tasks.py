"""A task module loaded through CONVEYOR_TASK_MODULES, as a client team's would be."""

from pydantic import BaseModel, Field

from conveyor.core.catalog import JobContext, task
from conveyor.core.queues import Queue


class CountArgs(BaseModel):
    """Arguments of `tests.count`."""

    key: str = Field(..., description="Redis key to increment.")
    redis_url: str


@task(name="tests.count", queue=Queue.HIGH, args=CountArgs)
def count(ctx: JobContext, args: CountArgs) -> dict[str, int]:
    """Count executions of a job in Redis (used to prove a job ran exactly once)."""
    import redis

    client = redis.Redis.from_url(args.redis_url)
    try:
        return {"executions": int(client.incr(args.key)), "attempt": ctx.attempt}
    finally:
        client.close()


class StubbornArgs(BaseModel):
    """Arguments of `tests.stubborn`."""

    seconds: float = Field(..., ge=0, le=60)


@task(name="tests.stubborn", queue=Queue.DEFAULT, args=StubbornArgs)
def stubborn(ctx: JobContext, args: StubbornArgs) -> None:
    """Sleep, swallowing the soft time limit's exception: only the hard limit stops it."""
    import contextlib
    import time

    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # swallowing is the point of this task
            time.sleep(0.1)
