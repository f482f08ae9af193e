"""The job store: job records, indexes, idempotency keys and delayed messages in Redis.

Every write is one Lua script call (see `lua/`), so each state change is atomic and costs one
round trip. `JobStore` (redis-py, blocking) serves workers and beat; `AsyncJobStore` serves
the API. Both share the argument builders and parsers below.
"""

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from importlib import resources
from typing import Any

import orjson
import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from conveyor.core.jobs import TERMINAL_STATES, Job, JobState
from conveyor.core.keys import Keys
from conveyor.core.queues import Queue

_LIB = resources.files("conveyor.core.lua").joinpath("_lib.lua").read_text()


def _script_source(name: str) -> str:
    return _LIB + "\n" + resources.files("conveyor.core.lua").joinpath(f"{name}.lua").read_text()


class Lua:
    """A Lua script called with EVALSHA, loaded on the first NOSCRIPT; `run` on a blocking
    client, `run_async` on an asyncio one.

    redis-py's `Script` does the same, but its per-call checks cost a fifth of the API's CPU on
    the accept path and a quarter of a worker main process's per delivery (measured with
    py-spy). Conveyor's scripts take no KEYS: everything is in ARGV.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: "redis.Redis", args: Sequence[Any]) -> Any:
        """Run the script with `args` as ARGV."""
        try:
            return client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, 0, *args)

    async def run_async(self, client: "redis.asyncio.Redis", args: Sequence[Any]) -> Any:
        """Run the script with `args` as ARGV, on an asyncio client."""
        try:
            return await client.evalsha(self.sha, 0, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, 0, *args)


ACCEPT = Lua(_script_source("accept"))
TRANSITION = Lua(_script_source("transition"))
PROMOTE = Lua(_script_source("promote"))
START = Lua(_script_source("start"))
REPLAY = Lua(_script_source("replay"))
PURGE = Lua(_script_source("purge"))
RATELIMIT = Lua(_script_source("ratelimit"))
RECOVER_INFLIGHT = Lua(_script_source("recover_inflight"))

# Dead-letter operations go through Redis in batches of this many ids per script call.
DEAD_LETTER_BATCH = 500

CANCELLABLE = (JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, JobState.RETRYING)


@dataclass(frozen=True)
class NewJob:
    """A validated submission, ready to be written by the accept script."""

    id: str
    tenant: str
    task: str
    queue: Queue
    args: dict[str, Any]
    max_retries: int
    timeout_seconds: int | None
    idempotency_key: str | None
    callback_url: str | None
    created_at: float
    due_at: float | None
    request_hash: str

    @property
    def initial_state(self) -> JobState:
        """Scheduled when it has a due time, otherwise queued."""
        return JobState.SCHEDULED if self.due_at is not None else JobState.QUEUED

    @cached_property
    def record(self) -> dict[str, str]:
        """The job hash's fields, built once: the accept script and the response use both."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "task": self.task,
            "queue": str(self.queue),
            "state": str(self.initial_state),
            "args": orjson.dumps(self.args).decode(),
            "attempts": "0",
            "max_retries": str(self.max_retries),
            "timeout_seconds": "" if self.timeout_seconds is None else str(self.timeout_seconds),
            "idempotency_key": self.idempotency_key or "",
            "callback_url": self.callback_url or "",
            "created_at": repr(self.created_at),
            "scheduled_for": "" if self.due_at is None else repr(self.due_at),
        }


@dataclass(frozen=True)
class Limits:
    """What accept.lua enforces besides atomicity: the tenant's bucket and queue depths."""

    rate_per_second: float = 0.0
    burst: int = 1
    max_queue_depth: int = 0
    max_delayed_jobs: int = 0


class AcceptVerdict(StrEnum):
    """How accept.lua answered."""

    CREATED = "created"
    EXISTING = "existing"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"


@dataclass(frozen=True)
class AcceptResult:
    """What the accept script did: created a job, found the idempotency key's job, or refused.

    `job_id`/`request_hash` are set for CREATED and EXISTING; `tokens_left` for CREATED;
    `retry_after_ms` for RATE_LIMITED; `depth` for QUEUE_FULL.
    """

    verdict: AcceptVerdict
    job_id: str = ""
    request_hash: str = ""
    tokens_left: int = 0
    retry_after_ms: int = 0
    depth: int = 0

    @property
    def created(self) -> bool:
        """A new job was recorded and enqueued."""
        return self.verdict is AcceptVerdict.CREATED


@dataclass(frozen=True)
class TransitionResult:
    """What the transition script did; `previous_state` is None when the job does not exist."""

    applied: bool
    previous_state: JobState | None
    attempts: int
    has_callback: bool = False


@dataclass(frozen=True)
class StartResult:
    """What start.lua decided: 'run', 'skip' or 'poison' (see the script)."""

    verdict: str
    previous_state: JobState | None
    attempts: int
    deaths: int


@dataclass(frozen=True)
class Page:
    """One page of a job listing, newest first."""

    jobs: list[Job]
    next_cursor: str | None


class InvalidCursorError(ValueError):
    """A listing cursor that this server did not issue."""


def _ms(timestamp: float) -> str:
    return str(int(timestamp * 1000))


def accept_args(
    prefix: str, job: NewJob, message: bytes, retention_seconds: int, limits: Limits
) -> list[Any]:
    """ARGV for accept.lua."""
    return [
        prefix,
        job.id,
        job.idempotency_key or "",
        job.request_hash,
        retention_seconds,
        _ms(job.created_at),
        _ms(job.due_at) if job.due_at is not None else "0",
        str(job.queue),
        job.task,
        str(job.initial_state),
        message,
        job.tenant,
        repr(float(limits.rate_per_second)),
        limits.burst,
        limits.max_queue_depth,
        limits.max_delayed_jobs,
        orjson.dumps(job.record),
    ]


def parse_accept(raw: Sequence[Any], job: NewJob) -> AcceptResult:
    """Decode accept.lua's reply."""
    code = int(raw[0])
    if code == 1:
        return AcceptResult(
            AcceptVerdict.CREATED, _text(raw[1]), job.request_hash, tokens_left=int(raw[2])
        )
    if code == 0:
        existing_id, _, existing_hash = _text(raw[1]).partition("\n")
        return AcceptResult(AcceptVerdict.EXISTING, existing_id, existing_hash)
    if code == 2:
        return AcceptResult(AcceptVerdict.RATE_LIMITED, retry_after_ms=int(raw[1]))
    return AcceptResult(AcceptVerdict.QUEUE_FULL, depth=int(raw[1]))


def transition_args(
    prefix: str,
    job_id: str,
    *,
    allowed: Sequence[JobState],
    new_state: JobState,
    expire_seconds: int = 0,
    count_attempt: bool = False,
    delayed: tuple[str, float | None, bytes] = ("", None, b""),
    fields: dict[str, str] | None = None,
) -> list[Any]:
    """ARGV for transition.lua."""
    op, due_at, message = delayed
    flat = [item for pair in (fields or {}).items() for item in pair]
    return [
        prefix,
        job_id,
        "|" + "|".join(allowed) + "|",
        str(new_state),
        expire_seconds,
        "1" if count_attempt else "0",
        op,
        _ms(due_at) if due_at is not None else "0",
        message,
        *flat,
    ]


def parse_transition(raw: Sequence[Any]) -> TransitionResult:
    """Decode transition.lua's reply."""
    state = _text(raw[1])
    callback = len(raw) > 3 and bool(_text(raw[3]))
    return TransitionResult(
        bool(int(raw[0])), JobState(state) if state else None, int(raw[2]), callback
    )


def decode_record(raw: dict[Any, Any]) -> Job | None:
    """A job from HGETALL's reply, or None if the key does not exist."""
    if not raw:
        return None
    return Job.from_record({_text(k): _text(v) for k, v in raw.items()})


def encode_cursor(score: float, job_id: str) -> str:
    """An opaque cursor pointing just past (score, job id)."""
    return base64.urlsafe_b64encode(f"{int(score)}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of `encode_cursor`; raises InvalidCursorError on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = raw.split(":", 1)
        return int(score), job_id
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursorError(cursor) from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class JobStore:
    """Blocking job store for workers and beat."""

    def __init__(
        self,
        client: "redis.Redis",
        prefix: str,
        retention_seconds: int,
        dead_letter_retention_seconds: int = 14 * 24 * 3600,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.retention_seconds = retention_seconds
        self.dead_letter_retention_seconds = dead_letter_retention_seconds

    def accept(self, job: NewJob, message: bytes) -> AcceptResult:
        """Record and enqueue a job atomically (see accept.lua).

        Used for the platform's own jobs (periodic runs, callbacks): no tenant limit applies,
        since refusing them would lose them.
        """
        args = accept_args(self.keys.prefix, job, message, self.retention_seconds, Limits())
        return parse_accept(ACCEPT.run(self.client, args), job)

    def start(
        self, job_id: str, now: float, max_deaths: int, generation: int | None = None
    ) -> StartResult:
        """Begin a delivery of the message of `generation` (see start.lua)."""
        verdict, state, attempts, deaths = START.run(
            self.client,
            [
                self.keys.prefix,
                job_id,
                repr(now),
                max_deaths,
                "" if generation is None else generation,
            ],
        )
        previous = JobState(_text(state)) if state else None
        return StartResult(_text(verdict), previous, int(attempts), int(deaths))

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""
        return decode_record(self.client.hgetall(self.keys.job(job_id)))

    def transition(
        self,
        job_id: str,
        *,
        allowed: Sequence[JobState],
        new_state: JobState,
        count_attempt: bool = False,
        delayed: tuple[str, float | None, bytes] = ("", None, b""),
        fields: dict[str, str] | None = None,
    ) -> TransitionResult:
        """Apply a state change if the job is in one of the `allowed` states."""
        expire = self.retention_seconds if new_state in TERMINAL_STATES else 0
        if delayed[0] == "dead":
            expire = self.dead_letter_retention_seconds
        args = transition_args(
            self.keys.prefix,
            job_id,
            allowed=allowed,
            new_state=new_state,
            expire_seconds=expire,
            count_attempt=count_attempt,
            delayed=delayed,
            fields=fields,
        )
        return parse_transition(TRANSITION.run(self.client, args))

    def promote_due(self, now: float, limit: int = 500) -> int:
        """Push delayed messages whose due time has come onto their queues."""
        return int(PROMOTE.run(self.client, [self.keys.prefix, _ms(now), limit]))

    def prune_index(self, key: str, older_than: float, budget: int = 5000) -> int:
        """Drop ids of expired jobs from one index, oldest first; returns how many went."""
        removed, start = 0, 0
        while start < budget:
            ids = self.client.zrangebyscore(key, "-inf", _ms(older_than), start=start, num=500)
            if not ids:
                break
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.exists(self.keys.job(_text(job_id)))
                exists = pipe.execute()
            gone = [_text(job_id) for job_id, alive in zip(ids, exists, strict=True) if not alive]
            if gone:
                self.client.zrem(key, *gone)
                removed += len(gone)
            start += len(ids) - len(gone)
        return removed

    def heartbeat(self, consumer: str, queues: Sequence[str], now: float) -> None:
        """Record that `consumer` is alive and consuming `queues`."""
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zadd(self.keys.consumers(queue), {consumer: now})
            pipe.execute()

    def retire(self, consumer: str, queues: Sequence[str]) -> None:
        """Mark `consumer` gone at once (a clean stop), so its in-flight lists are recovered."""
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zadd(self.keys.consumers(queue), {consumer: 0})
            pipe.execute()

    def recover_inflight(self, now: float, ttl_seconds: float) -> int:
        """Requeue the in-flight messages of consumers silent for longer than `ttl_seconds`."""
        return sum(
            int(RECOVER_INFLIGHT.run(self.client, [self.keys.prefix, str(queue), now, ttl_seconds]))
            for queue in Queue
        )

    def prune_dead_letters(self, older_than: float) -> int:
        """Forget dead letters older than the dead-letter retention."""
        ids = self.client.zrangebyscore(self.keys.dead, "-inf", _ms(older_than), start=0, num=5000)
        if not ids:
            return 0
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.dead, *ids)
            pipe.hdel(self.keys.dead_messages, *ids)
            pipe.execute()
        return len(ids)

    def index_keys(self) -> list[str]:
        """Every index sorted set (found by pattern: the task set is open-ended)."""
        return [
            _text(k) for k in self.client.scan_iter(match=f"{self.keys.prefix}:index:*", count=500)
        ]


class AsyncJobStore:
    """Asynchronous job store for the API."""

    def __init__(self, client: "redis.asyncio.Redis", prefix: str, retention_seconds: int) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.retention_seconds = retention_seconds

    async def accept(
        self, job: NewJob, message: bytes, limits: Limits | None = None
    ) -> AcceptResult:
        """Record and enqueue a job atomically, within `limits` (see accept.lua)."""
        args = accept_args(
            self.keys.prefix, job, message, self.retention_seconds, limits or Limits()
        )
        return parse_accept(await ACCEPT.run_async(self.client, args), job)

    async def take_token(self, tenant: str, rate: float, burst: int) -> tuple[bool, int, int]:
        """One token from the tenant's bucket: (taken, whole tokens left, ms to the next)."""
        taken, left, wait = await RATELIMIT.run_async(
            self.client, [self.keys.prefix, tenant, repr(float(rate)), burst]
        )
        return bool(int(taken)), int(left), int(wait)

    async def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""
        return decode_record(await self.client.hgetall(self.keys.job(job_id)))

    async def cancel(self, job_id: str, now: float) -> TransitionResult:
        """Cancel a job that has not finished; a delayed one loses its pending message."""
        args = transition_args(
            self.keys.prefix,
            job_id,
            allowed=CANCELLABLE,
            new_state=JobState.CANCELLED,
            expire_seconds=self.retention_seconds,
            delayed=("drop", None, b""),
            fields={"finished_at": repr(now), "error": ""},
        )
        return parse_transition(await TRANSITION.run_async(self.client, args))

    async def list_jobs(
        self,
        *,
        tenant: str | None = None,
        state: JobState | None = None,
        task: str | None = None,
        queue: Queue | None = None,
        limit: int = 50,
        cursor: str | None = None,
        index: str | None = None,
    ) -> Page:
        """Jobs newest first, from the most selective index; other filters are checked per job.

        `tenant` None lists every tenant's jobs. `index` lists another sorted set of job ids
        instead (the dead-letter set).
        """
        filters: dict[str, str] = {}
        candidates: list[str] = []
        if tenant is not None:
            filters["tenant"] = tenant
            candidates.append(self.keys.index_tenant(tenant))
        if state is not None:
            filters["state"] = str(state)
            candidates.append(self.keys.index_state(state))
        if task is not None:
            filters["task"] = task
            candidates.append(self.keys.index_task(task))
        if queue is not None:
            filters["queue"] = str(queue)
            candidates.append(self.keys.index_queue(queue))
        if index is None:
            index = await self._smallest(candidates) if candidates else self.keys.index_all

        bound_score: str = "+inf"
        bound_id: str | None = None
        if cursor is not None:
            bound_score, bound_id = _cursor_bound(cursor)
        jobs: list[Job] = []
        last: tuple[float, str] | None = None
        more = True
        # Bounded work per request: a sparse filter returns a short page plus a cursor.
        budget, batch = limit * 20, limit + 1
        while len(jobs) < limit and budget > 0:
            reply: list[Any] = await self.client.zrevrangebyscore(
                index, bound_score, "-inf", start=0, num=batch, withscores=True
            )
            rows = [(_text(member), float(score)) for member, score in reply]
            # Entries sharing the cursor's score come in descending id order; skip those seen.
            fresh = [
                (m, s)
                for m, s in rows
                if bound_id is None or not (s == float(bound_score) and m >= bound_id)
            ]
            if not fresh:
                if len(rows) < batch:
                    more = False
                    break
                batch *= 2  # a run of equal scores longer than the batch: widen and retry
                continue
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id, _ in fresh:
                    pipe.hgetall(self.keys.job(job_id))
                records = await pipe.execute()
            expired, consumed = [], 0
            for (job_id, score), raw in zip(fresh, records, strict=True):
                consumed += 1
                budget -= 1
                last = (score, job_id)
                job = decode_record(raw)
                if job is None:
                    expired.append(job_id)
                elif all(str(getattr(job, name)) == value for name, value in filters.items()):
                    jobs.append(job)
                if len(jobs) == limit or budget == 0:
                    break
            if expired:
                await self.client.zrem(index, *expired)
                if index == self.keys.dead:
                    await self.client.hdel(self.keys.dead_messages, *expired)
            if (consumed == len(fresh) and len(rows) < batch) or last is None:
                more = False
                break
            bound_score, bound_id = str(int(last[0])), last[1]
        next_cursor = encode_cursor(*last) if more and last is not None else None
        return Page(jobs, next_cursor)

    async def replay_dead_letters(self, job_ids: Sequence[str] | None = None) -> int:
        """Put dead-lettered jobs back on their queues (all of them when `job_ids` is None)."""
        return await self._dead_letter_batches(REPLAY, [self.keys.prefix], job_ids)

    async def purge_dead_letters(self, job_ids: Sequence[str] | None = None) -> int:
        """Drop dead letters (all of them when `job_ids` is None)."""
        head = [self.keys.prefix, self.retention_seconds]
        return await self._dead_letter_batches(PURGE, head, job_ids)

    async def _dead_letter_batches(
        self, script: Lua, head: list[Any], job_ids: Sequence[str] | None
    ) -> int:
        if job_ids is not None:
            return int(await script.run_async(self.client, [*head, *job_ids])) if job_ids else 0
        done = 0
        while batch := await self.client.zrange(self.keys.dead, 0, DEAD_LETTER_BATCH - 1):
            done += int(await script.run_async(self.client, [*head, *batch]))
        return done

    async def _smallest(self, keys: list[str]) -> str:
        if len(keys) == 1:
            return keys[0]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcard(key)
            sizes = await pipe.execute()
        return min(zip(sizes, keys, strict=True))[1]


def _cursor_bound(cursor: str) -> tuple[str, str]:
    score, job_id = decode_cursor(cursor)
    return str(score), job_id
