"""The job record: its states, the resource clients read, and the codec of its Redis hash
(`NewJob.record` writes it, `decode_record` reads it).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Self

import orjson
from pydantic import BaseModel, Field

from conveyor.core.queues import Queue
from conveyor.core.values import value


class JobState(StrEnum):
    """Where a job is in its life."""

    # A workflow step whose parents have not all succeeded: recorded, its message kept aside.
    WAITING = "waiting"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """A terminal job never changes again (and expires after the retention period)."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Progress(BaseModel):
    """How far a running job has come, as its task last reported."""

    current: float
    total: float | None = None
    message: str | None = None


class JobError(BaseModel):
    """Why a job failed: an exception type and message, never a stack trace."""

    type: str
    message: str


class JobSummary(BaseModel):
    """A job as listings return it: everything but its arguments and result, which can be
    large (a listing asks for them with `fields`).
    """

    id: str
    tenant: str = Field(..., description="The tenant that submitted the job.")
    task: str
    queue: Queue
    state: JobState
    progress: Progress | None = None
    error: JobError | None = None
    attempts: int = Field(0, description="How many times the job has started running.")
    deaths: int = Field(0, description="How many times a worker died while running the job.")
    max_retries: int
    timeout_seconds: int | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    concurrency_key: str | None = Field(
        None, description="The caller's concurrency key (the task limits jobs sharing one)."
    )
    workflow_id: str | None = Field(None, description="The workflow this job is a step of.")
    step: str | None = Field(None, description="Its step's name in that workflow.")
    created_at: datetime
    scheduled_for: datetime | None = Field(None, description="When a delayed job becomes due.")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    dead_lettered_at: datetime | None = Field(
        None, description="Set while the job is in the dead-letter set."
    )

    @classmethod
    def from_record(cls, record: dict[str, str]) -> "Self":
        """Decode the Redis hash written by the job store's scripts (the listing's
        `SUMMARY_FIELDS` of it suffice for a summary).
        """
        return cls(**_summary_values(record), **cls._extra_values(record))

    @classmethod
    def _extra_values(cls, record: dict[str, str]) -> dict[str, Any]:
        return {}


class Job(JobSummary):
    """A job as the API returns it."""

    args: dict[str, Any]
    result: Any = None

    @classmethod
    def _extra_values(cls, record: dict[str, str]) -> dict[str, Any]:
        return {
            "args": orjson.loads(record["args"]),
            "result": orjson.loads(record["result"]) if "result" in record else None,
        }


def _summary_values(record: dict[str, str]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "tenant": record.get("tenant", ""),
        "task": record["task"],
        "queue": Queue(record["queue"]),
        "state": JobState(record["state"]),
        "progress": _json_or_none(record.get("progress")),
        "error": _json_or_none(record.get("error")),
        "attempts": int(record.get("attempts") or "0"),
        "deaths": int(record.get("deaths") or "0"),
        "max_retries": int(record["max_retries"]),
        "timeout_seconds": _int_or_none(record.get("timeout_seconds")),
        "idempotency_key": record.get("idempotency_key") or None,
        "callback_url": record.get("callback_url") or None,
        "concurrency_key": record.get("concurrency_key") or None,
        "workflow_id": record.get("workflow") or None,
        "step": record.get("step") or None,
        "created_at": _timestamp(record["created_at"]),
        "scheduled_for": _timestamp_or_none(record.get("scheduled_for")),
        "started_at": _timestamp_or_none(record.get("started_at")),
        "finished_at": _timestamp_or_none(record.get("finished_at")),
        "dead_lettered_at": _timestamp_or_none(record.get("dead_lettered_at")),
    }


def _json_or_none(raw: str | None) -> Any:
    return orjson.loads(raw) if raw else None


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw else None


def _timestamp(raw: str) -> datetime:
    return datetime.fromtimestamp(float(raw), UTC)


def _timestamp_or_none(raw: str | None) -> datetime | None:
    return _timestamp(raw) if raw else None


class UniqueMode(StrEnum):
    """How long a submission's uniqueness key holds (docs/flow-control.md)."""

    QUEUED = "queued"
    ACTIVE = "active"
    TTL = "ttl"
    DEBOUNCE = "debounce"


@dataclass(frozen=True)
class UniqueSpec:
    """A submission's uniqueness: its key (per tenant and task), mode, and TTL (ttl mode)."""

    key: str
    mode: UniqueMode
    ttl_seconds: int = 0

    def fields(self) -> dict[str, str]:
        """The record's fields for it."""
        return {"unique_key": self.key, "unique_mode": str(self.mode),
                "unique_ttl": str(self.ttl_seconds)}  # fmt: skip


# The fields a record starts with, in this order: accept.lua takes them by position from
# the record's field/value pairs (`conveyor.jobstore._calls.accept_calls`).
RECORD_HEAD = ("id", "tenant", "task", "queue", "state")


@value
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
    concurrency_key: str | None = None
    # Uniqueness (accept.lua): the tenant's key for this task, its mode, and for `ttl` mode
    # how long the key holds.
    unique: UniqueSpec | None = None

    @property
    def initial_state(self) -> JobState:
        """Scheduled when it has a due time, otherwise queued."""
        return JobState.SCHEDULED if self.due_at is not None else JobState.QUEUED

    @cached_property
    def record(self) -> dict[str, str]:
        """The job hash's fields, built once: the accept script and the response use both.

        `RECORD_HEAD` comes first, in its order (accept.lua reads those by position); an
        optional field that is not set is left out rather than written empty, as every
        reader takes a missing field for unset (attempts: 0). Each field left out saves
        Redis ~2k instructions per job (bench/README.md, round 12).
        """
        record = {
            "id": self.id,
            "tenant": self.tenant,
            "task": self.task,
            "queue": str(self.queue),
            "state": str(self.initial_state),
            "args": orjson.dumps(self.args).decode(),
            "max_retries": str(self.max_retries),
            "created_at": repr(self.created_at),
        }
        if self.timeout_seconds is not None:
            record["timeout_seconds"] = str(self.timeout_seconds)
        if self.idempotency_key:
            record["idempotency_key"] = self.idempotency_key
        if self.callback_url:
            record["callback_url"] = self.callback_url
        if self.concurrency_key:
            record["concurrency_key"] = self.concurrency_key
        if self.unique:
            record.update(self.unique.fields())
        if self.due_at is not None:
            record["scheduled_for"] = repr(self.due_at)
        return record

    def job(self) -> Job:
        """The job as just accepted: what `Job.from_record(self.record)` would read back,
        validated from the values at hand rather than parsed back from the record's text
        (half the CPU; tested equal).
        """
        return Job.model_validate(
            {
                "id": self.id,
                "tenant": self.tenant,
                "task": self.task,
                "queue": self.queue,
                "state": self.initial_state,
                "max_retries": self.max_retries,
                "timeout_seconds": self.timeout_seconds,
                "idempotency_key": self.idempotency_key or None,
                "callback_url": self.callback_url or None,
                "concurrency_key": self.concurrency_key or None,
                "created_at": datetime.fromtimestamp(self.created_at, UTC),
                "scheduled_for": None
                if self.due_at is None
                else datetime.fromtimestamp(self.due_at, UTC),
                # As the record holds them (a caller's tuple is a list, a datetime a string).
                "args": orjson.loads(self.record["args"]),
            }
        )


def decode_record(raw: dict[Any, Any]) -> Job | None:
    """A job from HGETALL's reply, or None if the key does not exist."""
    if not raw:
        return None
    return Job.from_record({text_of(k): text_of(v) for k, v in raw.items()})


def text_of(value: Any) -> str:
    """A Redis reply value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
