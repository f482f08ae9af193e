"""Request and response bodies. The submission body is built per deployment from the task
catalogue, so OpenAPI shows every task's own argument schema and validation names the field.
"""

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, create_model, model_validator

from conveyor.core.bounds import IDEMPOTENCY_KEY_PATTERN, MAX_TIMEOUT_SECONDS
from conveyor.core.catalog import TaskCatalog, TaskSpec
from conveyor.core.queues import Queue
from conveyor.jobstore.listing import ListedJob
from conveyor.jobstore.model import UniqueMode

# A caller's concurrency key: an id of its own (a customer, an account), never free text.
CONCURRENCY_KEY_PATTERN = r"^[A-Za-z0-9._:@~-]{1,128}$"


class UniqueRequest(BaseModel):
    """Uniqueness of a submission among the tenant's jobs of the same task."""

    model_config = ConfigDict(extra="forbid")

    mode: UniqueMode = Field(
        ...,
        description="`queued`: while a job with the same key has not started; `active`: "
        "until it finishes; `ttl`: for `ttl_seconds` after it was accepted; `debounce`: a "
        "delayed job with the same key that has not started takes this submission's "
        "arguments and due time (needs `delay_seconds`). The job answering is returned "
        "with 200, as for an idempotent replay.",
    )
    key: str | None = Field(
        None,
        pattern=CONCURRENCY_KEY_PATTERN,
        description="Defaults to a fingerprint of the arguments (for debounce: the task).",
    )
    ttl_seconds: int | None = Field(
        None, ge=1, le=30 * 24 * 3600, description="How long the key holds (`ttl` mode only)."
    )

    @model_validator(mode="after")
    def _ttl_for_ttl_mode(self) -> "UniqueRequest":
        if (self.mode is UniqueMode.TTL) != (self.ttl_seconds is not None):
            raise ValueError("ttl_seconds is required for mode ttl, and only for it")
        return self


class SubmissionBase(BaseModel):
    """Fields every submission has, whatever its task."""

    model_config = ConfigDict(extra="forbid")

    priority: Queue | None = Field(None, description="Queue tier; defaults to the task's own.")
    idempotency_key: str | None = Field(
        None,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Replays with the same key and body return the same job. "
        "The Idempotency-Key header works too.",
    )
    delay_seconds: float = Field(0.0, ge=0, description="Run no earlier than this from now.")
    max_retries: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Retries on retryable errors; defaults to the task's policy.",
    )
    timeout_seconds: int | None = Field(
        None, ge=1, le=MAX_TIMEOUT_SECONDS, description="Soft time limit of one attempt."
    )
    callback_url: HttpUrl | None = Field(
        None, description="Receives a signed POST of the job when it reaches a terminal state."
    )
    unique: UniqueRequest | None = Field(
        None, description="Answer with an existing job of the same key instead of a new one."
    )


def _concurrency_key_field(spec: TaskSpec) -> dict[str, Any]:
    """`concurrency_key` for a task that limits jobs per key; none otherwise (an unknown
    field: 422).
    """
    if not spec.concurrency_key_limit:
        return {}
    description = (f"Jobs of this task sharing a key (of this tenant) run at most "
                   f"{spec.concurrency_key_limit} at a time; the others wait.")  # fmt: skip
    field = Field(None, pattern=CONCURRENCY_KEY_PATTERN, description=description)
    return {"concurrency_key": (str | None, field)}


def submission_model(catalog: TaskCatalog, max_delay_seconds: int) -> Any:
    """A tagged union of one submission model per task, discriminated by `task`."""
    variants = []
    for spec in catalog.values():
        model_name = "Submit_" + "".join(c if c.isalnum() else "_" for c in spec.name)
        variants.append(
            create_model(
                model_name,
                __base__=SubmissionBase,
                __doc__=f"Submit a `{spec.name}` job. {spec.description}".strip(),
                task=(Literal[spec.name], Field(..., description="Task name.")),  # type: ignore[arg-type]
                args=(
                    spec.args_model,
                    Field(default={}, validate_default=True, description="Task arguments."),
                ),
                delay_seconds=(float, Field(0.0, ge=0, le=max_delay_seconds)),
                **_concurrency_key_field(spec),
                timeout_seconds=(
                    int | None,
                    Field(
                        None,
                        ge=1,
                        le=spec.max_timeout_seconds or MAX_TIMEOUT_SECONDS,
                        description="Soft time limit of one attempt"
                        + (
                            f", at most {spec.max_timeout_seconds} s for this task."
                            if spec.max_timeout_seconds
                            else "."
                        ),
                    ),
                ),
            )
        )
    if len(variants) == 1:
        return variants[0]
    return Annotated[Union[tuple(variants)], Field(discriminator="task")]  # noqa: UP007


class JobPage(BaseModel):
    """A page of jobs, newest first: summaries, with `args` and `result` only when asked for
    (`fields`); the job's own resource has everything.
    """

    items: list[ListedJob]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class TaskInfo(BaseModel):
    """A catalogued task."""

    name: str
    queue: Queue
    description: str
    args_schema: dict[str, Any]
    retry: dict[str, Any]
    timeout_seconds: int | None
    max_timeout_seconds: int | None = Field(
        None, description="The longest `timeout_seconds` a submission of this task may ask for."
    )


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
