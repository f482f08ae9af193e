"""Job and trace context on every log line written while a job runs."""

import logging
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace

_job: ContextVar[dict[str, str] | None] = ContextVar("conveyor_job", default=None)


def bind_job(job_id: str, task: str, queue: str) -> None:
    """Attach a job to the log lines that follow (in this context)."""
    _job.set({"job_id": job_id, "task": task, "queue": queue})


def unbind_job() -> None:
    """Stop attaching the job."""
    _job.set(None)


class ContextFilter(logging.Filter):
    """Adds job_id, task, queue and trace_id to records, and a `context` suffix for text."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate `record`; never drops it."""
        fields: dict[str, Any] = dict(_job.get() or {})
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            fields["trace_id"] = format(span.trace_id, "032x")
        for name, value in fields.items():
            setattr(record, name, value)
        record.context = (
            " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" if fields else ""
        )
        return True
