"""`AsyncJobStore`: the job store of the API (redis-py's asyncio client).

The same scripts and machine table as `JobStore`; the API's verbs: submit within the tenant's
limits, read, list, cancel, and the dead letters' replay and purge.
"""

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio

from conveyor.core.catalog import TaskSpec
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore import _calls
from conveyor.jobstore.coalesce import AcceptQueue, accept_replies
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.listing import LISTABLE_FIELDS, SUMMARY_FIELDS, ListedJob, decode_listed
from conveyor.jobstore.machine import Verb, transition
from conveyor.jobstore.model import Job, JobState, decode_record, text_of
from conveyor.jobstore.replication import confirmed_replicas
from conveyor.jobstore.results import (
    AcceptResult,
    AcceptVerdict,
    Limits,
    Page,
    TransitionResult,
)
from conveyor.jobstore.scripts import ACCEPT, PURGE, RATELIMIT, READ, REPLAY, TRANSITION, Lua
from conveyor.jobstore.submission import Submission, current_trace_context, prepare
from conveyor.jobstore.workflow_store import WorkflowVerbs

# The verdicts that write (or found written) a job, which replicated acknowledgement confirms.
_REPLICATED_VERDICTS = (AcceptVerdict.CREATED, AcceptVerdict.EXISTING)

# Dead-letter operations go through Redis in batches of this many ids per script call.
DEAD_LETTER_BATCH = 500


class AsyncJobStore(WorkflowVerbs):
    """Asynchronous job store for the API (its workflow verbs: `WorkflowVerbs`)."""

    def __init__(self, client: "redis.asyncio.Redis", settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = KeySpace(settings.key_prefix)
        self.retention_seconds = settings.jobs.retention_seconds
        self._accepts = AcceptQueue(client, self.keys.prefix)

    async def submit(
        self, spec: TaskSpec, submission: Submission, limits: Limits | None = None
    ) -> AcceptResult:
        """Record and enqueue a job atomically, within `limits` (accept)."""
        job, message = prepare(spec, submission, self.settings.worker)
        replication = self.settings.redis_replication
        if not replication.ack_replicas:
            reply = await self._accepts.accept(job, message, limits or Limits())
            return _calls.parse_accept(_calls.refused_step(reply), job)
        ((args, _),) = _calls.accept_calls(self.keys.prefix, [(job, message, limits or Limits())])
        # Replicated acknowledgement: WAIT counts the replicas that have this connection's
        # writes, so the script and the WAIT share one connection.
        async with self.client.client() as conn:
            reply = (await ACCEPT.run_async(conn, args))[0]
            result = _calls.parse_accept(_calls.refused_step(reply), job)
            if result.verdict not in _REPLICATED_VERDICTS:
                return result
            replayed = result.verdict is AcceptVerdict.EXISTING
            confirmed = await confirmed_replicas(conn, self.keys.prefix, replication, replayed)
        if confirmed < replication.ack_replicas:
            return AcceptResult(
                AcceptVerdict.NOT_REPLICATED, job_id=result.job_id, replicas=confirmed
            )
        return result

    async def submit_many(
        self, items: Sequence[tuple[TaskSpec, Submission, Limits]]
    ) -> list[AcceptResult]:
        """Accept each job as `submit` does (each all-or-nothing, each within its limits, in
        order), in one round trip: accept script calls of up to ACCEPT_BATCH jobs each,
        pipelined; with replicated acknowledgement, one WAIT for them all.
        """
        worker, trace = self.settings.worker, current_trace_context()  # the batch's span
        prepared = [(*prepare(spec, sub, worker, trace_context=trace), lim)
                    for spec, sub, lim in items]  # fmt: skip
        replication = self.settings.redis_replication
        async with self.client.client() as conn:
            # A call Redis refused stands for its own jobs only: nothing of them was written.
            per_job = await accept_replies(conn, self.keys.prefix, prepared)
            results = [
                AcceptResult(AcceptVerdict.BROKER_ERROR, job_id=job.id)
                if isinstance(reply, Exception)
                else _calls.parse_accept(reply, job)
                for reply, (job, _, _) in zip(per_job, prepared, strict=True)
            ]
            written = [r for r in results if r.verdict in _REPLICATED_VERDICTS]
            if not replication.ack_replicas or not written:
                return results
            replayed = any(r.verdict is AcceptVerdict.EXISTING for r in written)
            confirmed = await confirmed_replicas(conn, self.keys.prefix, replication, replayed)
        if confirmed >= replication.ack_replicas:
            return results
        return [
            AcceptResult(AcceptVerdict.NOT_REPLICATED, job_id=r.job_id, replicas=confirmed)
            if r.verdict in _REPLICATED_VERDICTS
            else r
            for r in results
        ]

    async def take_token(self, tenant: str, rate: float, burst: int) -> tuple[bool, int, int]:
        """One token from the tenant's bucket: (taken, whole tokens left, ms to the next)."""
        taken, left, wait = await RATELIMIT.run_async(
            self.client, [self.keys.prefix, tenant, repr(float(rate)), burst]
        )
        return bool(int(taken)), int(left), int(wait)

    async def get(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job, or None when unknown or expired; with `tenant`, also None when it is
        another tenant's (checked inside Redis: that costs what an unknown id costs).
        """
        if tenant is None:
            return decode_record(await self.client.hgetall(self.keys.job(job_id)))
        flat = await READ.run_async(self.client, [self.keys.prefix, job_id, tenant])
        return decode_record(dict(zip(flat[::2], flat[1::2], strict=True)))

    async def cancel(self, job_id: str) -> TransitionResult:
        """Cancel a job that has not finished; a delayed one loses its pending message."""
        rule = transition(Verb.CANCEL)
        args = _calls.transition_args(
            self.keys.prefix,
            job_id,
            rule,
            self.retention_seconds,
            message_op="drop",
            fields={"finished_at": repr(time.time()), "error": ""},
        )
        return _calls.parse_transition(await TRANSITION.run_async(self.client, args))

    async def callback_enqueued(self, job_id: str) -> None:
        """The job's completion callback is enqueued: no sweep needs to do it."""
        await self.client.zrem(self.keys.callbacks_pending, job_id)

    async def list_jobs(
        self,
        *,
        tenant: str | None = None,
        state: JobState | None = None,
        task: str | None = None,
        queue: Queue | None = None,
        limit: int = 50,
        cursor: str | None = None,
        dead_letters: bool = False,
        fields: frozenset[str] = frozenset(),
        max_bytes: int = 0,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        """Jobs newest first, as summaries (plus `fields`: "args", "result"); other filters
        are checked per job.

        `tenant` None lists every tenant's jobs; a tenant's listing scans only that tenant's
        own index, so its cursor is always one of its own jobs (never a position among other
        tenants' jobs). `dead_letters` lists the dead-letter set. With `max_bytes` the page
        ends early (after at least one job) once the asked-for fields pass that many bytes.
        `since` and `until` (epoch seconds) bound the index's time: a job's creation (a dead
        letter's death).
        """
        filters: dict[str, str] = {}
        if tenant is not None:
            filters["tenant"] = tenant
        if state is not None:
            filters["state"] = str(state)
        if task is not None:
            filters["task"] = task
        if queue is not None:
            filters["queue"] = str(queue)
        if dead_letters:
            index = self.keys.dead
        elif tenant is not None:
            index = self.keys.index_tenant(tenant)
        else:
            candidates = [
                *([self.keys.index_state(state)] if state is not None else []),
                *([self.keys.index_task(task)] if task is not None else []),
                *([self.keys.index_queue(queue)] if queue is not None else []),
            ]
            index = await self._smallest(candidates) if candidates else self.keys.index_all
        read = (*SUMMARY_FIELDS, *sorted(fields & LISTABLE_FIELDS))
        heavy = range(len(SUMMARY_FIELDS), len(read))

        bound_score: str = "+inf" if until is None else _calls.ms(until)
        floor = "-inf" if since is None else _calls.ms(since)
        bound_id: str | None = None
        if cursor is not None:
            cursor_score, bound_id = _calls.decode_cursor(cursor)
            bound_score = str(cursor_score)
        jobs: list[ListedJob] = []
        last: tuple[float, str] | None = None
        score: float
        more = True
        size = 0
        # Bounded work per request: a sparse filter returns a short page plus a cursor.
        budget, batch = limit * 20, limit + 1
        while len(jobs) < limit and budget > 0:
            reply: list[Any] = await self.client.zrevrangebyscore(
                index, bound_score, floor, start=0, num=batch, withscores=True
            )
            rows = [(_member(member), float(score)) for member, score in reply]
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
                    pipe.hmget(self.keys.job(job_id), read)
                records = await pipe.execute()
            expired, consumed, full = [], 0, False
            for (job_id, score), values in zip(fresh, records, strict=True):
                consumed += 1
                budget -= 1
                last = (score, job_id)
                job = decode_listed(read, values)
                if job is None:
                    expired.append(job_id)
                elif all(str(getattr(job, name)) == value for name, value in filters.items()):
                    jobs.append(job)
                    size += sum(len(values[i] or b"") for i in heavy)
                    full = bool(max_bytes) and size >= max_bytes
                if len(jobs) == limit or budget == 0 or full:
                    break
            if expired:
                await self.client.zrem(index, *expired)
                if dead_letters:
                    await self.client.hdel(self.keys.dead_messages, *expired)
            if full:
                break
            if (consumed == len(fresh) and len(rows) < batch) or last is None:
                more = False
                break
            bound_score, bound_id = str(int(last[0])), last[1]
        next_cursor = _calls.encode_cursor(*last) if more and last is not None else None
        return Page(jobs, next_cursor)

    async def job_of_idempotency_key(self, tenant: str, key: str) -> str | None:
        """The id of the tenant's job submitted with idempotency `key`, while it is kept."""
        held = await self.client.get(self.keys.idempotency(tenant, key))
        return text_of(held).partition("\n")[0] if held else None

    async def replay(self, job_ids: Sequence[str] | None = None) -> int:
        """Put dead-lettered jobs back on their queues (all of them when `job_ids` is None)."""
        head = [self.keys.prefix, transition(Verb.REPLAY).allowed]
        return await self._dead_letter_batches(REPLAY, head, job_ids)

    async def purge(self, job_ids: Sequence[str] | None = None) -> int:
        """Drop dead letters (all of them when `job_ids` is None); their records expire."""
        head = [self.keys.prefix, self.retention_seconds]
        return await self._dead_letter_batches(PURGE, head, job_ids)

    async def _dead_letter_batches(
        self, script: Lua, head: list[Any], job_ids: Sequence[str] | None
    ) -> int:
        # Each call answers {done, kept}: dead letters it left in the set are paged past.
        if job_ids is not None:
            return (
                int((await script.run_async(self.client, [*head, *job_ids]))[0]) if job_ids else 0
            )
        done = kept = 0
        while batch := await self.client.zrange(self.keys.dead, kept, kept + DEAD_LETTER_BATCH - 1):
            reply = await script.run_async(self.client, [*head, *batch])
            done, kept = done + int(reply[0]), kept + int(reply[1])
        return done

    async def _smallest(self, keys: list[str]) -> str:
        if len(keys) == 1:
            return keys[0]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcard(key)
            sizes = await pipe.execute()
        return min(zip(sizes, keys, strict=True))[1]


def _member(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
