"""GET /v1/jobs/{id}/events: a job's state and progress changes as Server-Sent Events.

The workers' scripts append every change to a Redis stream per job (`emit` in _lib.lua); the
stream entry ids are the event ids, so a client that reconnects with `Last-Event-ID` gets
exactly the events it missed. Events:

- `job`: the whole job resource. First on a fresh connection (a snapshot), and last, when the
  job reaches a terminal state (with its result or error); the stream then ends.
- `state`: `{state, attempts, progress}` when the state changes.
- `progress`: the same shape, when only the progress changed.
"""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import redis.asyncio
from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from conveyor.api.auth import Reader
from conveyor.api.deps import PROBLEM_RESPONSES, ApiState, State, existing_job
from conveyor.api.problems import ProblemError
from conveyor.jobstore.model import Job, JobState, decode_record

EVENT_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"
_MAX_ID_PART = 2**64 - 1
# Each blocking read waits at most this long, so a closed stream is noticed within it.
BLOCK_SECONDS = 5.0
# The scripts keep about this many events per job (XADD MAXLEN ~ in _lib.lua).
STREAM_MAXLEN = 1000


async def _followed_job(job_id: str, state: State, principal: Reader) -> AsyncIterator[Job]:
    # A dependency, so an unknown (or another tenant's) job is a 404, and a full process a
    # 503, before the stream starts; the slot is given back by the dependency's teardown,
    # which runs once the stream is over, or the request is, however it ended.
    job = await existing_job(state, job_id, principal)
    async with stream_slot(state, principal.tenant):
        yield job


@asynccontextmanager
async def stream_slot(state: ApiState, tenant: str) -> AsyncIterator[None]:
    """One of the process's event-stream slots for `tenant` (429 past the tenant's own
    limit, 503 past the process's), held for the block. It is checked and taken in one step
    (no await in between: concurrent requests cannot all pass the check).
    """
    limits, streams = state.settings.api, state.open_streams
    if streams.by_tenant[tenant] >= limits.max_event_streams_per_tenant:
        # The tenant's own limit, named as such: it says nothing about other tenants.
        raise ProblemError(
            429,
            "Too many event streams",
            f"This tenant follows {limits.max_event_streams_per_tenant} jobs at once on this "
            "API process, its limit; close a stream, retry later, or poll the job.",
            slug="tenant-streams-exhausted",
            headers={"Retry-After": "5"},
        )
    if streams.total >= limits.max_event_streams:
        raise ProblemError(
            503,
            "Too many event streams",
            "This API process serves its maximum of event streams; retry, or poll the job.",
            slug="streams-exhausted",
            headers={"Retry-After": "5"},
        )
    streams.opened(tenant)
    try:
        yield
    finally:
        streams.closed(tenant)


def events_router() -> APIRouter:
    """The event-stream route."""
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=PROBLEM_RESPONSES)

    @router.get(
        "/{job_id}/events",
        response_class=EventSourceResponse,
        summary="Follow a job's events (SSE)",
    )
    async def job_events(
        job: Annotated[Job, Depends(_followed_job)],
        state: State,
        last_event_id: Annotated[str | None, Depends(last_event_id_header)],
    ) -> AsyncIterator[ServerSentEvent]:
        """Stream the job's changes until it reaches a terminal state: first the job itself
        (`job`), then `state` and `progress` events, then the final `job`. Reconnect with
        `Last-Event-ID` to resume without losing events. A stream stays open at most
        `CONVEYOR_API__EVENTS_MAX_SECONDS`; reconnecting then resumes it.
        """
        async for event in follow(state, job.id, last_event_id):
            yield event

    return router


async def last_event_id_header(
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=EVENT_ID_PATTERN)
    ] = None,
) -> str | None:
    """The `Last-Event-ID` header, refused (422, before the stream starts) unless it can be a
    Redis stream id that can be read past: both parts below 2^64 - 1 (Redis refused larger
    ones mid-stream, and reading past the largest).
    """
    if last_event_id is not None and any(int(p) >= _MAX_ID_PART for p in last_event_id.split("-")):
        raise ProblemError(
            422,
            "Invalid Last-Event-ID",
            "Last-Event-ID is not an event id this API sent; reconnect without it.",
            slug="validation-error",
        )
    return last_event_id


async def follow(
    state: ApiState, job_id: str, last_event_id: str | None
) -> AsyncIterator[ServerSentEvent]:
    """The events of `job_id` after `last_event_id` (a snapshot first when there is none, or
    when the stream no longer holds the events after it).
    """
    client: redis.asyncio.Redis = state.streams
    key = state.store.keys.events(job_id)
    deadline = time.monotonic() + state.settings.api.events_max_seconds
    if last_event_id is not None and not await lost_events(client, key, last_event_id):
        cursor = last_event_id
        # Resuming a finished job with nothing left to send: end with the job itself, or a
        # reconnecting EventSource would wait out every stream and reconnect forever.
        done = await state.store.get(job_id)
        if (
            done is not None
            and done.state.is_terminal
            and not await client.xrange(key, min=f"({cursor}", count=1)
        ):
            yield ServerSentEvent(event="job", id=cursor, data=done.model_dump(mode="json"))
            return
    else:
        job, cursor = await _snapshot(state, key, job_id)
        if job is None:
            return
        yield ServerSentEvent(event="job", id=cursor, data=job.model_dump(mode="json"))
        if job.state.is_terminal:
            return
    while time.monotonic() < deadline:
        block_ms = int(min(BLOCK_SECONDS, max(0.01, deadline - time.monotonic())) * 1000)
        reply: Any = await client.xread({key: cursor}, block=block_ms, count=100)
        if not reply:
            if not await client.exists(state.store.keys.job(job_id)):
                return  # expired or purged while we waited
            continue
        for entry_id, fields in reply[0][1]:
            cursor = entry_id
            entry_state = JobState(fields["state"])
            if entry_state.is_terminal:
                final = await state.store.get(job_id)
                if final is not None:
                    yield ServerSentEvent(
                        event="job", id=entry_id, data=final.model_dump(mode="json")
                    )
                return
            kind = "progress" if fields.get("kind") == "progress" else "state"
            yield ServerSentEvent(event=kind, id=entry_id, data=_change(fields))


def _change(fields: dict[str, str]) -> dict[str, Any]:
    progress = fields.get("progress")
    return {
        "state": fields["state"],
        "attempts": int(fields.get("attempts") or 0),
        "progress": orjson.loads(progress) if progress else None,
    }


async def _snapshot(state: ApiState, key: str, job_id: str) -> tuple[Job | None, str]:
    # One MULTI: the record and the stream's last id agree, so no change falls between them.
    async with state.streams.pipeline(transaction=True) as pipe:
        pipe.hgetall(state.store.keys.job(job_id))
        pipe.xrevrange(key, count=1)
        record, last = await pipe.execute()
    return decode_record(record), (last[0][0] if last else "0-0")


async def lost_events(client: redis.asyncio.Redis, key: str, last_event_id: str) -> bool:
    """Whether events after `last_event_id` may have been trimmed from the stream, so that a
    snapshot must come first (a needless snapshot is harmless; a silent gap is not).
    """
    first: Any = await client.xrange(key, count=1)
    if not first or _id(first[0][0]) <= _id(last_event_id):
        return False
    if last_event_id == "0-0":  # the client saw a snapshot of a job with no events yet
        return bool(await client.xlen(key) >= STREAM_MAXLEN)
    return True


def _id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)
