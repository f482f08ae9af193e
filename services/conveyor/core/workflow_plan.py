"""A workflow request, and the plan it becomes: the DAG expanded from its sugar (`chain`,
`chord`), every step checked (its task, arguments, parents, inputs), cycles and sizes refused
with `InvalidWorkflowError` naming each place (the API answers it as a 422; beat refuses a
schedule file holding one), and the steps put parents first.
"""

from collections import deque
from collections.abc import Sequence
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.networks import AnyUrl

from conveyor.core.bounds import IDEMPOTENCY_KEY_PATTERN, MAX_TIMEOUT_SECONDS, first_shape_fault
from conveyor.core.catalog import TaskCatalog
from conveyor.core.netguard import NetGuard, UnsafeUrlError
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.submission import Submission
from conveyor.jobstore.workflow import ALL_PARENTS, StepPlan, WorkflowPlan
from conveyor.jobstore.workflow_model import FailurePolicy

STEP_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class InvalidWorkflowError(ValueError):
    """A workflow that cannot be accepted: (JSON pointer, what is wrong) of each fault."""

    def __init__(self, errors: Sequence[tuple[str, str]], detail: str | None = None) -> None:
        self.errors = list(errors)
        self.detail = detail or "The workflow is not valid; see errors."
        super().__init__(self.detail + " " + "; ".join(f"{p}: {d}" for p, d in self.errors))


class StepRequest(BaseModel):
    """One step: a catalogued task with its own arguments and options, and its parents."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        pattern=STEP_NAME_PATTERN,
        description="Unique in the workflow; `depends_on` and `inputs` refer to it. In a "
        "`chain` or `chord` it defaults to `step-<n>` (its place, from 0).",
    )
    task: str = Field(..., description="A catalogued task (GET /v1/tasks).")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="The task's arguments, validated against its model as POST /v1/jobs "
        "validates them (GET /v1/tasks shows each schema), except those `inputs` fills.",
    )
    priority: Queue | None = Field(None, description="Queue tier; defaults to the task's.")
    max_retries: int | None = Field(None, ge=0, le=100)
    timeout_seconds: int | None = Field(None, ge=1, le=MAX_TIMEOUT_SECONDS)
    depends_on: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Steps that must succeed before this one runs (not in a `chain` or a "
        "`chord`, whose shape says it).",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Arguments filled from parents' results when the step starts: argument "
        "name -> a parent's name (its result), or `*` (the list of every parent's result, in "
        "`depends_on` order). Validated by the task's model then.",
    )


class ChordRequest(BaseModel):
    """Fan-out then fan-in: the `parallel` steps, then `then`, after all of them."""

    model_config = ConfigDict(extra="forbid")

    parallel: list[StepRequest] = Field(..., min_length=1)
    then: StepRequest


class WorkflowRequest(BaseModel):
    """A workflow: exactly one of `steps` (a DAG), `chain` or `chord`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="A label of the caller's.")
    failure_policy: FailurePolicy = Field(
        FailurePolicy.FAIL_FAST,
        description="`fail_fast`: a failed step stops the workflow (nothing else starts); "
        "`continue`: only the steps that depend on it are skipped.",
    )
    idempotency_key: str | None = Field(
        None,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Replays with the same key and body return the same workflow (the "
        "Idempotency-Key header works too).",
    )
    steps: list[StepRequest] | None = Field(None, min_length=1)
    chain: list[StepRequest] | None = Field(
        None, min_length=1, description="Each step after the one before it."
    )
    chord: ChordRequest | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        given = [s for s in (self.steps, self.chain, self.chord) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of steps, chain and chord")
        return self


def expand(request: WorkflowRequest) -> tuple[list[StepRequest], str]:
    """The steps of any shape as a DAG, and the pointer prefix of each step's place."""
    if request.steps is not None:
        return request.steps, "#/steps/{}"
    if request.chain is not None:
        steps: list[StepRequest] = []
        for n, step in enumerate(request.chain):
            _no_depends_on(step, f"#/chain/{n}")
            name = step.name or f"step-{n}"
            parents = [steps[-1].name] if steps else []
            steps.append(step.model_copy(update={"name": name, "depends_on": parents}))
        return steps, "#/chain/{}"
    assert request.chord is not None
    parallel = []
    for n, step in enumerate(request.chord.parallel):
        _no_depends_on(step, f"#/chord/parallel/{n}")
        parallel.append(step.model_copy(update={"name": step.name or f"step-{n}"}))
    then = request.chord.then
    _no_depends_on(then, "#/chord/then")
    names = [s.name for s in parallel]
    last = then.model_copy(update={"name": then.name or f"step-{len(parallel)}",
                                   "depends_on": names})  # fmt: skip
    return [*parallel, last], "#/chord/parallel/{}"


def _no_depends_on(step: StepRequest, pointer: str) -> None:
    if step.depends_on:
        raise invalid([(f"{pointer}/depends_on", "a chain's or chord's shape gives the parents")])


def invalid(errors: Sequence[tuple[str, str]], detail: str | None = None) -> InvalidWorkflowError:
    """The error naming each place."""
    return InvalidWorkflowError(errors, detail)


def plan_of(
    request: WorkflowRequest,
    catalog: TaskCatalog,
    settings: Settings,
    tenant: str,
    idempotency_key: str | None,
) -> WorkflowPlan:
    """The validated plan of `request`; InvalidWorkflowError names every fault found."""
    steps, place = expand(request)
    chord_then = request.chord is not None

    def where(n: int) -> str:
        if chord_then and n == len(steps) - 1:
            return "#/chord/then"
        return place.format(n)

    limit = settings.workflows.max_steps
    if len(steps) > limit:
        raise invalid([("#/steps", f"{len(steps)} steps; a workflow has at most {limit}")])
    errors: list[tuple[str, str]] = []
    index: dict[str, int] = {}
    for n, step in enumerate(steps):
        # Named by expand in every shape but `steps`.
        if step.name is None:
            errors.append((f"{where(n)}/name", "every step of `steps` needs a name"))
        elif step.name in index:
            errors.append((f"{where(n)}/name", f"another step is named {step.name!r}"))
        else:
            index[step.name] = n
    if errors:
        raise invalid(errors)
    plans: list[StepPlan] = []
    for n, step in enumerate(steps):
        errors += _check_step(step, where(n), index, catalog, settings)
    if errors:
        raise invalid(errors)
    order = _topological(steps, index)
    if len(order) < len(steps):
        cyclic = [(f"{where(n)}/depends_on", "in a cycle, or after one")
                  for n in range(len(steps)) if n not in set(order)]  # fmt: skip
        raise invalid(cyclic, "The workflow is not a DAG: its depends_on form a cycle.")
    for n in order:
        step = steps[n]
        spec = catalog[step.task]
        submission = Submission.of(
            spec, tenant=tenant, args=_normalized(step, catalog), priority=step.priority,
            max_retries=step.max_retries, timeout_seconds=step.timeout_seconds,
        )  # fmt: skip
        assert step.name is not None
        plans.append(StepPlan(step.name, spec, submission, tuple(step.depends_on),
                              dict(step.inputs)))  # fmt: skip
    return WorkflowPlan(tenant, request.name, request.failure_policy, tuple(plans),
                        idempotency_key)  # fmt: skip


def _check_step(
    step: StepRequest,
    pointer: str,
    index: dict[str, int],
    catalog: TaskCatalog,
    settings: Settings,
) -> list[tuple[str, str]]:
    """Every fault of one step: its task, parents, inputs and arguments."""
    if step.task not in catalog:
        names = ", ".join(catalog)
        return [(f"{pointer}/task", f"Unknown task {step.task!r}; the tasks are: {names}.")]
    errors = []
    spec = catalog[step.task]
    for n, parent in enumerate(step.depends_on):
        if parent not in index:
            errors.append((f"{pointer}/depends_on/{n}", f"no step is named {parent!r}"))
        elif parent == step.name:
            errors.append((f"{pointer}/depends_on/{n}", "a step cannot depend on itself"))
    if len(set(step.depends_on)) != len(step.depends_on):
        errors.append((f"{pointer}/depends_on", "a parent is named twice"))
    fields = spec.args_model.model_fields
    for arg, source in step.inputs.items():
        if arg not in fields:
            errors.append((f"{pointer}/inputs/{arg}", f"{step.task} has no argument {arg!r}"))
        elif arg in step.args:
            errors.append((f"{pointer}/inputs/{arg}", "also given in args: give it once"))
        if source != ALL_PARENTS and source not in step.depends_on:
            errors.append((f"{pointer}/inputs/{arg}",
                           f"{source!r} is not one of the step's parents (or '*')"))  # fmt: skip
    if spec.max_timeout_seconds and (step.timeout_seconds or 0) > spec.max_timeout_seconds:
        errors.append((f"{pointer}/timeout_seconds",
                       f"at most {spec.max_timeout_seconds} for {step.task}"))  # fmt: skip
    try:
        model = spec.args_model.model_validate(step.args)
    except ValidationError as exc:
        left = [e for e in exc.errors()
                if not (e["type"] == "missing" and e["loc"][:1]
                        and str(e["loc"][0]) in step.inputs)]  # fmt: skip
        errors += [(f"{pointer}/args" + "".join(f"/{part}" for part in e["loc"]), e["msg"])
                   for e in left]  # fmt: skip
        # A step whose inputs are still to come: its own arguments are bounded all the same
        # (the URL guard checks them again when the request is made).
        limits = settings.limits
        found = first_shape_fault(step.args, limits.max_args_depth, limits.max_string_length)
        if found is not None:
            errors.append((f"{pointer}/args{found[0]}", found[1]))
        return errors
    limits = settings.limits
    found = first_shape_fault(model.model_dump(), limits.max_args_depth, limits.max_string_length)
    if found is not None:
        errors.append((f"{pointer}/args{found[0]}", found[1]))
    guard = NetGuard(settings.webhook.allowed_networks)
    for name, value in model.__dict__.items():
        if isinstance(value, AnyUrl):
            try:
                guard.check_literal(value.scheme, value.host or "")
            except UnsafeUrlError as exc:
                errors.append((f"{pointer}/args/{name}", str(exc)))
    return errors


def _normalized(step: StepRequest, catalog: TaskCatalog) -> dict[str, Any]:
    """The arguments as stored: the model's JSON when they are complete; as given when inputs
    fill some at the start (the worker's validation then sees them whole).
    """
    if step.inputs:
        return dict(step.args)
    return catalog[step.task].args_model.model_validate(step.args).model_dump(mode="json")


def _topological(steps: Sequence[StepRequest], index: dict[str, int]) -> list[int]:
    """Kahn's order, stable in the request's order; shorter than `steps` when there is a
    cycle (the steps in or after one are left out).
    """
    pending = [len(step.depends_on) for step in steps]
    children: list[list[int]] = [[] for _ in steps]
    for n, step in enumerate(steps):
        for parent in step.depends_on:
            children[index[parent]].append(n)
    ready = deque(n for n, count in enumerate(pending) if count == 0)
    order: list[int] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for child in children[n]:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return order
