"""Listed jobs: the summaries a listing returns, read from the summary fields of each record
(plus `args` and `result` when asked), and their JSON without the fields not asked for.
"""

from typing import Any

import orjson
from pydantic import Field

from conveyor.jobstore.model import JobSummary, text_of


class ListedJob(JobSummary):
    """A listing's item: a summary, plus `args` and `result` when the listing asked for them
    (`fields=args,result`); a field not asked for is absent, not null (see `listed_json`).
    """

    args: dict[str, Any] | None = Field(None, description="Present with `fields=args`.")
    result: Any = Field(None, description="Present with `fields=result`.")

    @classmethod
    def _extra_values(cls, record: dict[str, str]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if record.get("args"):
            extra["args"] = orjson.loads(record["args"])
        if LISTED_RESULT in record:
            extra["result"] = orjson.loads(record["result"]) if record["result"] else None
        return extra


# The record fields a summary is decoded from: a listing reads only these (HMGET), not the
# arguments and results that can be megabytes per job.
SUMMARY_FIELDS = (
    "id",
    "tenant",
    "task",
    "queue",
    "state",
    "progress",
    "error",
    "attempts",
    "deaths",
    "max_retries",
    "timeout_seconds",
    "idempotency_key",
    "callback_url",
    "workflow",
    "step",
    "created_at",
    "scheduled_for",
    "started_at",
    "finished_at",
    "dead_lettered_at",
)
# Marks a listed record whose result was asked for (an unset result reads back as "").
LISTED_RESULT = "result"
# The heavy fields a listing returns only when asked (`fields=args,result`).
LISTABLE_FIELDS = frozenset({"args", LISTED_RESULT})


def listed_json(job: ListedJob) -> dict[str, Any]:
    """A listed job as JSON, without the heavy fields the listing did not ask for."""
    return job.model_dump(mode="json", exclude=set(LISTABLE_FIELDS - job.model_fields_set))


def decode_listed(fields: tuple[str, ...], values: list[Any]) -> ListedJob | None:
    """A listed job from HMGET's reply for `fields`, or None if the key does not exist."""
    record = {name: text_of(value) for name, value in zip(fields, values, strict=True) if value}
    if "id" not in record:
        return None
    if LISTED_RESULT in fields:
        record.setdefault(LISTED_RESULT, "")
    return ListedJob.from_record(record)
