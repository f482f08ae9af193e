"""`Delivery`: one Celery delivery of a job, its headers parsed once."""

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate

from conveyor.core.catalog import TaskSpec
from conveyor.core.messages import (
    CONCURRENCY_KEY_HEADER,
    DUE_AT_HEADER,
    ENQUEUED_AT_HEADER,
    GENERATION_HEADER,
    MAX_RETRIES_HEADER,
    QUEUE_HEADER,
    TENANT_HEADER,
    build_message,
)
from conveyor.core.queues import Queue


@dataclass(frozen=True)
class Delivery:
    """What a worker knows of the job it was handed, from Celery's request."""

    job_id: str
    task: str
    queue: Queue
    tenant: str
    generation: int | None  # None for a message from outside Conveyor
    retries: int
    max_retries: int
    enqueued_at: float | None
    due_at: float | None
    soft_time_limit: float | None
    time_limit: float | None
    tag: str = ""  # kombu's delivery tag ('' when unknown): fresh on every redelivery
    # Flow control at claim (claim.lua reads them from the message): the caller's concurrency
    # key, and the task's limits, which every later message of the job carries too.
    concurrency_key: str | None = None
    task_limit: int | None = None
    key_limit: int | None = None

    @classmethod
    def of(cls, spec: TaskSpec, request: Any) -> "Delivery":
        """Parse a Celery request (Conveyor's headers arrive as its attributes)."""

        def header(name: str) -> Any:
            return getattr(request, name, None)

        generation, enqueued, due = (
            header(GENERATION_HEADER),
            header(ENQUEUED_AT_HEADER),
            header(DUE_AT_HEADER),
        )
        max_retries = header(MAX_RETRIES_HEADER)
        time_limit, soft_time_limit = request.timelimit or (None, None)
        properties = getattr(request, "properties", None) or {}
        return cls(
            job_id=request.id,
            task=spec.name,
            queue=Queue(header(QUEUE_HEADER) or spec.queue),
            tenant=header(TENANT_HEADER) or "",
            generation=None if generation is None else int(generation),
            retries=int(request.retries or 0),
            max_retries=spec.retry.max_retries if max_retries is None else int(max_retries),
            enqueued_at=None if enqueued is None else float(enqueued),
            due_at=float(due) if due else None,
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
            tag=str(properties.get("delivery_tag") or ""),
            concurrency_key=header(CONCURRENCY_KEY_HEADER) or None,
            task_limit=spec.max_concurrency,
            key_limit=spec.concurrency_key_limit,
        )

    def queue_wait(
        self, now: float | None = None, released_at: float | None = None
    ) -> float | None:
        """Start time minus max(enqueue time, due time), from the headers the API sets, or
        the time its workflow released it (`released_at`: a step waits for its parents
        before it waits in the queue, and only the latter is queue wait).
        """
        if self.enqueued_at is None:
            return None
        ready = max(self.enqueued_at, self.due_at or 0.0, released_at or 0.0)
        return max(0.0, (time.time() if now is None else now) - ready)

    @property
    def next_generation(self) -> int:
        """The generation of the next message of this job (a retry or a dead letter)."""
        return (self.generation or 0) + 1

    def next_message(
        self, kwargs: Mapping[str, Any], retries: int, due_at: float | None = None
    ) -> bytes:
        """The message of the job's next delivery: same job, next generation, within the
        same limits (a retry or a replay without them would run past its task's and key's).
        """
        trace_context: dict[str, str] = {}
        propagate.inject(trace_context)  # a retry stays in the job's trace
        return build_message(
            job_id=self.job_id,
            task=self.task,
            queue=self.queue,
            kwargs=kwargs,
            retries=retries,
            max_retries=self.max_retries,
            soft_time_limit=self.soft_time_limit,
            time_limit=self.time_limit,
            enqueued_at=time.time(),
            due_at=due_at,
            trace_context=trace_context,
            generation=self.next_generation,
            tenant=self.tenant,
            task_limit=self.task_limit,
            concurrency_key=self.concurrency_key,
            key_limit=self.key_limit,
        )
