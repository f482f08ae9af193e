"""Arguments and replies of the job scripts, shared by the blocking and asyncio stores."""

import base64
import binascii
import math
from collections.abc import Sequence
from typing import Any

import orjson
from redis.exceptions import ResponseError

from conveyor.jobstore.machine import ACTIVE_STATES, Expiry, Transition, Verb, listed, transition
from conveyor.jobstore.model import JobState, NewJob, text_of
from conveyor.jobstore.results import (
    AcceptResult,
    AcceptVerdict,
    InvalidCursorError,
    Limits,
    Quota,
    TransitionResult,
)
from conveyor.jobstore.runs import Fence, StartResult, StartVerdict, StepInputs
from conveyor.jobstore.workflow_model import WorkflowEnd, WorkflowState


def ms(timestamp: float) -> str:
    """Seconds as the integer milliseconds sorted sets are scored in."""
    return str(int(timestamp * 1000))


# How many jobs one accept script call takes at most, and how many bytes of arguments: Redis
# runs a script to its end before anything else. A call of 64 small jobs holds it about a
# millisecond (bench/redis_cost.py); Redis spends about 8 ms per MB of arguments (decoding the
# record, storing record and message), so a call of large jobs is bounded by its bytes (a job
# larger than the bound goes alone).
ACCEPT_BATCH = 64
ACCEPT_CALL_BYTES = 256 * 1024


def accept_calls(
    prefix: str, jobs: Sequence[tuple[NewJob, bytes, Limits]]
) -> list[tuple[list[Any], int]]:
    """ARGV for the accept.lua calls that accept `jobs` in their order: (ARGV, how many
    jobs), at most ACCEPT_BATCH jobs and ACCEPT_CALL_BYTES of arguments each (or one job),
    each call's jobs sharing their tenant limits (the call's head; only the tier's depth limit
    goes with each job).
    """
    calls: list[tuple[list[Any], int]] = []
    head: tuple[Any, ...] | None = None
    argv: list[Any] = []
    count = size = 0
    last_limits: Limits | None = None
    this_head: tuple[Any, ...] = ()
    for job, message, limits in jobs:
        if limits is not last_limits:  # a batch's jobs of one tier share one Limits
            this_head, last_limits = _accept_head(prefix, limits), limits
        # The record as one JSON array of field, value, field, value...: Redis writes it as
        # it comes (no table to walk), RECORD_HEAD at its known places.
        record = orjson.dumps([item for pair in job.record.items() for item in pair])
        job_size = len(record) + len(message)
        if this_head != head or count == ACCEPT_BATCH or size + job_size > ACCEPT_CALL_BYTES:
            if count:
                calls.append((argv, count))
            head, argv, count, size = this_head, list(this_head), 0, 0
        size += job_size
        argv += [
            record,
            job.request_hash,
            ms(job.created_at),
            # The delay, not the due time: accept.lua adds it to Redis' clock.
            str(max(1, math.ceil((job.due_at - job.created_at) * 1000))) if job.due_at else "0",
            message,
            limits.max_queue_depth,
        ]
        count += 1
    if count:
        calls.append((argv, count))
    return calls


def _accept_head(prefix: str, limits: Limits) -> tuple[Any, ...]:
    return (
        prefix,
        repr(float(limits.rate_per_second)),
        limits.burst,
        limits.max_delayed_jobs,
        "1" if limits.weight == 1 else repr(float(limits.weight)),
        "" if limits.concurrency_per_tier is None else limits.concurrency_per_tier,
        limits.max_queued_per_tier,
        limits.max_delayed_per_tenant,
        limits.max_bytes,
        _ACTIVE,
    )


_ACTIVE = listed(ACTIVE_STATES)


def refused_step(raw: Sequence[Any]) -> Sequence[Any]:
    """accept.lua's reply for one submission on its own, raised as Redis' error when Redis
    refused one of its steps (a batch answers that job BROKER_ERROR instead): its callers
    (callbacks, schedules, the single-submission route) treat it as Redis failing.
    """
    if int(raw[0]) == 5:
        raise ResponseError(text_of(raw[1]))
    return raw


def parse_accept(raw: Sequence[Any], job: NewJob) -> AcceptResult:
    """Decode accept.lua's reply for one job."""
    code = int(raw[0])
    if code == 1:
        return AcceptResult(
            AcceptVerdict.CREATED, text_of(raw[1]), job=job.job(), tokens_left=int(raw[2])
        )
    if code == 0:
        existing_id, _, existing_hash = text_of(raw[1]).partition("\n")
        same = existing_hash == job.request_hash
        return AcceptResult(AcceptVerdict.EXISTING if same else AcceptVerdict.CONFLICT, existing_id)
    if code == 2:
        return AcceptResult(AcceptVerdict.RATE_LIMITED, retry_after_ms=int(raw[1]))
    if code == 4:
        quota = Quota(text_of(raw[1]), int(raw[2]))
        return AcceptResult(AcceptVerdict.QUOTA_EXCEEDED, quota=quota)
    if code == 5:
        return AcceptResult(AcceptVerdict.BROKER_ERROR, job_id=job.id)
    return AcceptResult(AcceptVerdict.QUEUE_FULL, depth=int(raw[1]))


def start_args(
    prefix: str,
    job_id: str,
    now: float,
    max_deaths: int,
    generation: int | None,
    owner: str,
    token: str,
    delivery: str = "",
    max_input_bytes: int = 1 << 20,
) -> list[Any]:
    """ARGV for start.lua."""
    allowed = transition(Verb.START).allowed
    return [prefix, job_id, repr(now), max_deaths, "" if generation is None else generation,
            allowed, owner, token, delivery, transition(Verb.SKIP).allowed,
            max_input_bytes]  # fmt: skip


def parse_start(raw: Sequence[Any]) -> StartResult:
    """Decode start.lua's reply."""
    verdict, state, attempts, deaths = raw[:4]
    previous = JobState(text_of(state)) if state else None
    return StartResult(
        StartVerdict(text_of(verdict)),
        previous,
        int(attempts),
        int(deaths),
        inputs=_inputs(raw[4]) if len(raw) > 4 else None,
        released_at=float(text_of(raw[5])) if len(raw) > 5 and raw[5] else None,
        workflow_ended=_workflow_end(raw, 6),
    )


def _inputs(raw: Any) -> StepInputs | None:
    """A step's inputs from start.lua: name, JSON value, ... or '!' and a parent's id."""
    if not isinstance(raw, list):
        return None
    values = [text_of(v) for v in raw]
    if values[:1] == ["!"] and values[1]:
        return StepInputs({}, missing_parent=values[1])
    if values[:1] == ["!"]:
        return StepInputs({}, size=int(values[2]))  # over the limit: nothing read
    pairs = list(zip(values[::2], values[1::2], strict=True))
    return StepInputs({name: orjson.loads(value) for name, value in pairs},
                      size=sum(len(value) for _, value in pairs))  # fmt: skip


def _workflow_end(raw: Sequence[Any], at: int) -> WorkflowEnd | None:
    """The workflow a script's step ended: its outcome and how long it took."""
    if len(raw) <= at + 1:
        return None
    return WorkflowEnd(WorkflowState(text_of(raw[at])), float(text_of(raw[at + 1])))


def expiry_seconds(rule: Transition, retention: int, dead_letter_retention: int) -> int:
    """The record's new time to live after `rule` (0: keep)."""
    return {
        Expiry.KEEP: 0,
        Expiry.RETENTION: retention,
        Expiry.DEAD_LETTER_RETENTION: dead_letter_retention,
    }[rule.expiry]


def transition_args(
    prefix: str,
    job_id: str,
    rule: Transition,
    expire_seconds: int,
    *,
    message_op: str = "",
    delay: float = 0.0,
    message: bytes = b"",
    fence: Fence | None = None,
    fields: dict[str, str] | None = None,
) -> list[Any]:
    """ARGV for transition.lua: the verb's states from the machine table, and the fence a
    write from a run must pass.
    """
    flat = [item for pair in (fields or {}).items() for item in pair]
    guard = ("", "") if fence is None else (fence.field, fence.value)
    return [
        prefix,
        job_id,
        rule.allowed,
        str(rule.target),
        expire_seconds,
        message_op,
        str(int(delay * 1000)),
        message,
        *guard,
        *flat,
    ]


def parse_transition(raw: Sequence[Any]) -> TransitionResult:
    """Decode transition.lua's reply."""
    state = text_of(raw[1])
    pending = len(raw) > 3 and int(raw[3]) == 1
    refusal = text_of(raw[4]) if len(raw) > 4 else ""
    return TransitionResult(
        bool(int(raw[0])), JobState(state) if state else None, int(raw[2]), pending,
        stale=refusal == "stale", unrecorded=refusal == "unrecorded",
        workflow_ended=_workflow_end(raw, 5),
    )  # fmt: skip


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
