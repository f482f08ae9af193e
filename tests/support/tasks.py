"""A task module loaded through CONVEYOR_TASK_MODULES, as a client team's would be."""

from typing import Any

from pydantic import Field
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.core.catalog import JobContext, RetryPolicy, TaskArgs, task
from conveyor.core.errors import RetryableError
from conveyor.core.queues import Queue


class CountArgs(TaskArgs):
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


class StubbornArgs(TaskArgs):
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


class WorkArgs(TaskArgs):
    """Arguments of `tests.work`."""

    redis_url: str
    seconds: float = Field(0.0, ge=0, le=600)


@task(
    name="tests.work",
    queue=Queue.DEFAULT,
    args=WorkArgs,
    # Its own Redis calls fail while the soak restarts Redis: retried, as real work would be.
    retry=RetryPolicy(max_retries=20, backoff_seconds=0.2, backoff_factor=1.5,
                      max_backoff_seconds=2.0, retry_on=(RetryableError, RedisConnectionError)),
)  # fmt: skip
def work(ctx: JobContext, args: WorkArgs) -> dict[str, int]:
    """Count this execution in the `executions` hash, work for `seconds`, count completion."""
    import time

    import redis

    client = redis.Redis.from_url(args.redis_url)
    try:
        executions = int(client.hincrby("executions", ctx.job_id, 1))
        deadline = time.monotonic() + args.seconds
        while (left := deadline - time.monotonic()) > 0:
            ctx.progress(args.seconds - left, args.seconds)
            time.sleep(min(0.2, left))
        client.hincrby("completions", ctx.job_id, 1)
        return {"executions": executions, "attempt": ctx.attempt}
    finally:
        client.close()


class KillArgs(TaskArgs):
    """Arguments of `tests.kill_worker`."""

    redis_url: str
    flag: str = Field(..., description="While this Redis key exists, the job kills its process.")


@task(name="tests.kill_worker", queue=Queue.DEFAULT, args=KillArgs)
def kill_worker(ctx: JobContext, args: KillArgs) -> dict[str, int]:
    """SIGKILL the process running the job while `flag` is set (a poison job), else succeed."""
    import os
    import signal

    import redis

    client = redis.Redis.from_url(args.redis_url)
    try:
        client.hincrby("executions", ctx.job_id, 1)
        if client.exists(args.flag):
            os.kill(os.getpid(), signal.SIGKILL)
        return {"attempt": ctx.attempt}
    finally:
        client.close()


class LeakArgs(TaskArgs):
    """Arguments of `tests.leak`."""

    message: str


@task(name="tests.leak", queue=Queue.HIGH, args=LeakArgs)
def leak(ctx: JobContext, args: LeakArgs) -> None:
    """Fails with `message`, which may hold secrets, as a careless library's error would."""
    raise RuntimeError(args.message)


class EscapeArgs(TaskArgs):
    """Arguments of `tests.escape`."""

    mode: str = Field(..., pattern="^(cancelled|base|unprintable)$")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _Escape(BaseException):
    """A task's own BaseException (not an Exception)."""


@task(name="tests.escape", queue=Queue.DEFAULT, args=EscapeArgs)
def escape(ctx: JobContext, args: EscapeArgs) -> None:
    """Leave the task body the ways that once left a job `running` for ever."""
    import asyncio

    if args.mode == "cancelled":
        raise asyncio.CancelledError
    if args.mode == "base":
        raise _Escape("escaping")
    raise _Unprintable


class KeyedArgs(TaskArgs):
    """Arguments of `tests.keyed`."""

    redis_url: str
    seconds: float = Field(1.0, ge=0, le=60)
    label: str = Field("run", pattern=r"^[a-z0-9-]+$", description="Names its alive keys.")


@task(name="tests.keyed", queue=Queue.DEFAULT, args=KeyedArgs, concurrency_key_limit=3)
def keyed(ctx: JobContext, args: KeyedArgs) -> dict[str, int]:
    """Run `seconds` while keeping a short-lived `alive:<label>:<job>:<pid>` key fresh, so a
    test can count the runs alive at any moment from Redis (a SIGKILLed run's key lapses in
    0.5 s); count executions and completions as `tests.work` does.
    """
    import os
    import time

    import redis

    client = redis.Redis.from_url(args.redis_url)
    alive = f"alive:{args.label}:{ctx.job_id}:{os.getpid()}"
    try:
        client.hincrby("executions", ctx.job_id, 1)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            client.set(alive, 1, px=500)
            time.sleep(0.1)
        client.delete(alive)
        client.hincrby("completions", ctx.job_id, 1)
        return {"attempt": ctx.attempt}
    finally:
        client.close()


class JoinArgs(TaskArgs):
    """Arguments of `tests.join`."""

    redis_url: str
    parents: list[dict[str, Any]] = Field(..., description="Every parent's result (inputs: *).")
    expected: int = Field(..., ge=1, description="How many parents the step has.")


@task(
    name="tests.join",
    queue=Queue.DEFAULT,
    args=JoinArgs,
    retry=RetryPolicy(max_retries=20, backoff_seconds=0.2, backoff_factor=1.5,
                      max_backoff_seconds=2.0, retry_on=(RetryableError, RedisConnectionError)),
)  # fmt: skip
def join(ctx: JobContext, args: JoinArgs) -> dict[str, int]:
    """A workflow's fan-in step: count this execution as `tests.work` does, and fail unless
    it received every parent's result (each a `tests.work` or `tests.join` result).
    """
    import redis

    if len(args.parents) != args.expected or not all("attempt" in p for p in args.parents):
        raise ValueError(f"expected {args.expected} parents' results, got {args.parents!r}")
    client = redis.Redis.from_url(args.redis_url)
    try:
        executions = int(client.hincrby("executions", ctx.job_id, 1))
        client.hincrby("completions", ctx.job_id, 1)
        return {"executions": executions, "attempt": ctx.attempt}
    finally:
        client.close()
