"""Task definitions: the `@task` decorator and the catalogue built from task modules.

A task is a plain function `fn(ctx: JobContext, args: ArgsModel) -> JSON` declared with its
name, queue and argument model right where it is defined. No Celery import is needed: the
worker binds every catalogued task to Celery, and the API validates submissions against the
same argument models.
"""

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, TypeVar, get_args

from pydantic import BaseModel, ConfigDict

from conveyor.core.errors import RetryableError
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings

WEBHOOK_TASK_MODULE = "conveyor.tasks.webhook"
BUILTIN_TASK_MODULES = ("conveyor.tasks.demo", WEBHOOK_TASK_MODULE, "conveyor.tasks.email")

_SPEC_ATTRIBUTE = "__conveyor_task__"


@dataclass(frozen=True)
class RetryPolicy:
    """When and how fast a failed job is tried again.

    The delay before retry n (1-based) is `min(max_backoff, base * factor**(n-1))`, then
    "full jitter" scales it by a random factor in [jitter_min, 1] so that a burst of failures
    does not come back as a burst.
    """

    max_retries: int = 3
    backoff_seconds: float = 2.0
    backoff_factor: float = 2.0
    max_backoff_seconds: float = 300.0
    jitter_min: float = 0.5
    retry_on: tuple[type[BaseException], ...] = (RetryableError,)

    def delay_for(self, retry_number: int, rand: float) -> float:
        """Seconds to wait before retry `retry_number`; `rand` is uniform in [0, 1)."""
        exponent = max(0, retry_number - 1)
        base = min(self.max_backoff_seconds, self.backoff_seconds * self.backoff_factor**exponent)
        return base * (self.jitter_min + (1.0 - self.jitter_min) * rand)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether `exc` is a transient failure under this policy."""
        return isinstance(exc, self.retry_on)

    def describe(self) -> dict[str, Any]:
        """The policy as the task catalogue shows it."""
        return {
            "max_retries": self.max_retries,
            "backoff_seconds": self.backoff_seconds,
            "backoff_factor": self.backoff_factor,
            "max_backoff_seconds": self.max_backoff_seconds,
            "retry_on": [exc.__name__ for exc in self.retry_on],
        }


class ProgressReporter(Protocol):
    """Records a running job's progress (and notices cancellation)."""

    def __call__(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Store progress; raises JobCancelledError if the job was cancelled meanwhile."""


@dataclass(frozen=True)
class JobContext:
    """What a task function knows about the job it runs.

    `attempt` starts at 1 and grows with every retry and every redelivery, so an effect can be
    made idempotent by keying it on `job_id` (see the built-in tasks).
    """

    job_id: str
    task: str
    queue: Queue
    attempt: int
    progress: ProgressReporter
    settings: Settings
    tenant: str = ""


class TaskArgs(BaseModel):
    """Base of task argument models: unknown fields are refused (422 naming the field).

    Pydantic ignores unknown fields by default, so a misspelt optional argument would run
    with its default, and two bodies differing only in an unknown field would count as the
    same idempotent request. The catalogue refuses a model that allows them.
    """

    model_config = ConfigDict(extra="forbid")


ArgsT = TypeVar("ArgsT", bound=BaseModel)
TaskFunction = Callable[[JobContext, Any], Any]


@dataclass(frozen=True)
class TaskSpec:
    """A catalogued task."""

    name: str
    queue: Queue
    args_model: type[BaseModel]
    fn: TaskFunction
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_seconds: int | None = None
    description: str = ""
    # The longest time limit a job of this task may ask for (`timeout_seconds` of a
    # submission; the API refuses more with 422), and the one it gets when it asks none.
    max_timeout_seconds: int | None = None
    # Flow control at claim: the most jobs of this task running at once across every worker,
    # and the most sharing one caller-chosen `concurrency_key` (None: no limit; a task without
    # `concurrency_key_limit` refuses submissions naming a key).
    max_concurrency: int | None = None
    concurrency_key_limit: int | None = None

    def time_limit(self, requested: int | None, default: int) -> int:
        """The soft time limit of an attempt: the job's own, else the task's, else the
        worker's `default`, never above `max_timeout_seconds`.
        """
        chosen = requested or self.timeout_seconds or default
        return min(chosen, self.max_timeout_seconds) if self.max_timeout_seconds else chosen

    def run(self, ctx: JobContext, raw_args: Mapping[str, Any]) -> Any:
        """Validate `raw_args` against the argument model and call the task function."""
        return self.fn(ctx, self.args_model.model_validate(raw_args))


def task(
    *,
    name: str,
    queue: Queue,
    args: type[ArgsT],
    retry: RetryPolicy | None = None,
    timeout_seconds: int | None = None,
    max_timeout_seconds: int | None = None,
    max_concurrency: int | None = None,
    concurrency_key_limit: int | None = None,
) -> Callable[[Callable[[JobContext, ArgsT], Any]], Callable[[JobContext, ArgsT], Any]]:
    """Declare a task: its public name, default queue and argument model; its default time
    limit per attempt, and the most a submission may ask for (`max_timeout_seconds`: a task
    that calls what a tenant names, like a webhook, must not be held for as long as the
    tenant likes); how many of its jobs may run at once (`max_concurrency`, e.g. an external
    API that allows 5 parallel calls) and how many sharing one `concurrency_key` of a tenant
    (`concurrency_key_limit`, e.g. one per customer).

    The decorated function is returned unchanged (it stays directly callable in tests); the
    spec is attached to it and collected by `TaskCatalog.from_modules`.
    """
    if not isinstance(queue, Queue):
        raise TypeError(f"task {name!r}: queue must be a Queue, got {queue!r}")
    if not (isinstance(args, type) and issubclass(args, BaseModel)):
        raise TypeError(f"task {name!r}: args must be a pydantic model class")
    if max_timeout_seconds is not None and (timeout_seconds or 0) > max_timeout_seconds:
        raise TypeError(f"task {name!r}: timeout_seconds exceeds max_timeout_seconds")
    for limit in (max_concurrency, concurrency_key_limit):
        if limit is not None and limit < 1:
            raise TypeError(f"task {name!r}: a concurrency limit must be at least 1")

    def register(fn: Callable[[JobContext, ArgsT], Any]) -> Callable[[JobContext, ArgsT], Any]:
        spec = TaskSpec(
            name=name,
            queue=queue,
            args_model=args,
            fn=fn,
            retry=retry or RetryPolicy(),
            timeout_seconds=timeout_seconds,
            description=inspect.cleandoc(fn.__doc__ or ""),
            max_timeout_seconds=max_timeout_seconds,
            max_concurrency=max_concurrency,
            concurrency_key_limit=concurrency_key_limit,
        )
        setattr(fn, _SPEC_ATTRIBUTE, spec)
        return fn

    return register


class TaskModuleError(ImportError):
    """A task module (CONVEYOR_TASK_MODULES) could not be imported; the message is one line
    naming the module and where it was looked for.
    """


def import_task_module(dotted: str) -> ModuleType:
    """Import `dotted`, or raise TaskModuleError saying which module is missing and where
    it was searched (a typo in a name is told apart from a module that fails to import).
    """
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        missing = exc.name or dotted
        if dotted == missing or dotted.startswith(missing + "."):
            what = "" if missing == dotted else f" (no module {missing!r})"
            raise TaskModuleError(
                f"task module {dotted!r} not found{what}; searched {search_path()}",
                name=dotted,
            ) from None
        raise TaskModuleError(
            f"task module {dotted!r} could not be imported: it imports {missing!r}, "
            f"which is not installed",
            name=dotted,
        ) from exc
    except Exception as exc:
        raise TaskModuleError(
            f"task module {dotted!r} failed to import: {type(exc).__name__}: {exc}", name=dotted
        ) from exc


def search_path() -> str:
    """Where modules are imported from, in order (the standard library left out)."""
    stdlib = os.path.dirname(os.__file__)
    hidden = {stdlib, os.path.join(stdlib, "lib-dynload")}
    cwd = os.getcwd()
    shown: list[str] = []
    for entry in sys.path:
        path = os.path.abspath(entry or cwd)
        if path in hidden or path.endswith(".zip") or path in shown:
            continue
        shown.append(path)
    return ", ".join(f"{p} (current directory)" if p == cwd else p for p in shown)


class UnknownTaskError(KeyError):
    """No task of that name is catalogued."""


class TaskCatalog(Mapping[str, TaskSpec]):
    """The tasks this deployment knows, by name."""

    def __init__(self, specs: Iterable[TaskSpec]) -> None:
        self._specs: dict[str, TaskSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"task {spec.name!r} is defined twice")
            loose = [m.__name__ for m in _models_in(spec.args_model)
                     if m.model_config.get("extra") != "forbid"]  # fmt: skip
            if loose:
                raise ValueError(
                    f"task {spec.name!r}: its argument model {spec.args_model.__name__} "
                    f"accepts unknown fields (in {', '.join(loose)}); derive every model of "
                    "its arguments from conveyor.core.catalog.TaskArgs (or set "
                    "model_config = ConfigDict(extra='forbid'))"
                )
            self._specs[spec.name] = spec

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> "TaskCatalog":
        """Import each dotted module path and collect the functions decorated with `@task`."""
        specs: list[TaskSpec] = []
        for dotted in modules:
            specs.extend(_specs_in(import_task_module(dotted)))
        return cls(specs)

    def __getitem__(self, name: str) -> TaskSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTaskError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._specs))

    def __len__(self) -> int:
        return len(self._specs)


def _models_in(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every model its fields hold, however nested (in lists, dicts, unions,
    Optional): each one must refuse unknown fields, or a typo inside one passes silently.
    """
    found: list[type[BaseModel]] = []
    pending: list[Any] = [model]
    while pending:
        kind = pending.pop()
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if kind in found:
                continue
            found.append(kind)
            pending.extend(field.annotation for field in kind.model_fields.values())
        else:
            pending.extend(get_args(kind))
    return found


def load_catalog(task_modules: Iterable[str], *, webhooks: bool = True) -> TaskCatalog:
    """The built-in tasks plus those of `task_modules` (CONVEYOR_TASK_MODULES); without
    `webhooks` (CONVEYOR_WEBHOOK__ENABLED=false), no `webhook.deliver`.
    """
    modules = [*BUILTIN_TASK_MODULES, *task_modules]
    if not webhooks:  # whatever task_modules says: nothing signs while webhooks are off
        modules = [m for m in modules if m != WEBHOOK_TASK_MODULE]
    return TaskCatalog.from_modules(dict.fromkeys(modules))


def catalog_for(settings: Settings) -> TaskCatalog:
    """The catalogue a deployment with `settings` serves."""
    return load_catalog(settings.task_modules, webhooks=settings.webhook.enabled)


def _specs_in(module: ModuleType) -> list[TaskSpec]:
    found = []
    for value in vars(module).values():
        spec = getattr(value, _SPEC_ATTRIBUTE, None)
        # Only functions defined here: a module that imports another's task must not re-register it.
        if isinstance(spec, TaskSpec) and getattr(value, "__module__", None) == module.__name__:
            found.append(spec)
    return found
