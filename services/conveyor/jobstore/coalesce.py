"""Group commit of the API's single submissions: the accepts that arrive while one accept
call is in flight go to Redis together, in the next call.

Redis runs a script's closures anew on every call and redis-py packs and parses each command
on its own, so one call per job costs both sides more than the job's own writes
(bench/README.md, performance round 2). Under load an API process has many submissions in
flight; gathered into one pipelined round trip of accept calls of up to ACCEPT_BATCH jobs
(accept.lua answers each job as it would have been answered alone), they cost Redis about
half as much per job. A lone submission is sent at once: nothing waits for company.
"""

import asyncio
from asyncio import CancelledError
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.jobstore._calls import ACCEPT_BATCH, ACCEPT_CALL_BYTES, accept_calls
from conveyor.jobstore.model import NewJob
from conveyor.jobstore.results import Limits
from conveyor.jobstore.scripts import ACCEPT, Lua

Prepared = tuple[NewJob, bytes, Limits]

# The most jobs one round trip takes (pipelined accept calls of ACCEPT_BATCH each), and the
# most bytes of them (one job larger goes alone): what waits beyond goes in the next. Every
# reply of a round trip must come within the API client's socket timeout (0.6 s): a round trip
# of 256 jobs of 900 KB took Redis seconds, and each of them was answered 503 although Redis
# had queued it.
MOST_PER_ROUND_TRIP = 4 * ACCEPT_BATCH
MOST_BYTES_PER_ROUND_TRIP = 2 * ACCEPT_CALL_BYTES  # of messages: about half a job's arguments


async def accept_replies(
    conn: "redis.asyncio.Redis", prefix: str, jobs: Sequence[Prepared]
) -> list[Any]:
    """accept.lua's reply for each of `jobs`, in one round trip (pipelined calls of up to
    ACCEPT_BATCH jobs): a job's reply, or the exception of the call that carried it (nothing
    of that call was written; the other calls' jobs stand). Raises when every call failed.
    """
    calls = accept_calls(prefix, jobs)
    if len(calls) == 1:
        replies: list[Any] = [await ACCEPT.run_async(conn, calls[0][0])]
    else:
        replies = await _pipelined(conn, ACCEPT, [argv for argv, _ in calls])
    return [
        job_reply
        for reply, (_, count) in zip(replies, calls, strict=True)
        for job_reply in (reply if not isinstance(reply, Exception) else [reply] * count)
    ]


async def _pipelined(conn: "redis.asyncio.Redis", script: Lua, calls: list[list[Any]]) -> list[Any]:
    """`script` run with each of `calls`, pipelined on `conn` (loaded first if Redis lost it:
    a pipeline cannot fall back call by call).
    """
    for attempt in range(2):
        async with conn.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.evalsha(script.sha, 0, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = any(isinstance(r, NoScriptError) for r in replies)
        if not missing or attempt == 1:
            break
        await conn.script_load(script.source)
    if not replies or all(isinstance(r, Exception) for r in replies):
        # Nothing was written (Redis down, or refusing every write): as for one submission.
        raise next(iter(r for r in replies if isinstance(r, Exception)), RedisError("no reply"))
    return replies  # a failed call stands for its own jobs only: the others were written


class AcceptQueue:
    """The accepts of one API process (one event loop), sent one round trip at a time: those
    that arrive while a round trip is under way wait for it and go together in the next.

    A round trip that cannot reach Redis (down, silent: a connection error or a timeout)
    fails every accept waiting with it too: they were not sent, and would only wait out
    another timeout before failing the same way. So no submission waits longer than one round
    trip's timeouts. Any other failure (Redis refused the call) is the round trip's own: those
    waiting go in the next.
    """

    def __init__(self, client: "redis.asyncio.Redis", prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        # (job, its future, its size)
        self._waiting: list[tuple[Prepared, asyncio.Future[Any], int]] = []
        self._sender: asyncio.Task[None] | None = None

    async def accept(self, job: NewJob, message: bytes, limits: Limits) -> Any:
        """accept.lua's reply for this job (raises what the round trip that carried it
        raised).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(((job, message, limits), future, len(message)))
        if self._sender is None:
            # Started, not awaited: it runs after the callbacks ready now, so the submissions
            # already under way in this process join the first round trip.
            self._sender = loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch = self._next_round_trip()
                try:
                    jobs = [prepared for prepared, _, _ in batch]
                    replies = await accept_replies(self._client, self._prefix, jobs)
                except BaseException as exc:
                    if isinstance(exc, RedisConnectionError | RedisTimeoutError | CancelledError):
                        batch += self._waiting
                        self._waiting.clear()
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, CancelledError):
                        raise
                    continue
                for (_, future, _), reply in zip(batch, replies, strict=True):
                    if future.done():  # its request went away: the job stands all the same
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    def _next_round_trip(self) -> list[tuple[Prepared, "asyncio.Future[Any]", int]]:
        """The oldest waiting accepts, up to MOST_PER_ROUND_TRIP of them and
        MOST_BYTES_PER_ROUND_TRIP of their messages (at least one).
        """
        taken = size = 0
        for _, _, job_size in self._waiting:
            if taken == MOST_PER_ROUND_TRIP or (
                taken and size + job_size > MOST_BYTES_PER_ROUND_TRIP
            ):
                break
            taken, size = taken + 1, size + job_size
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        return batch
