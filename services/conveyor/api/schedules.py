"""/v1/schedules: periodic runs created, changed, paused and triggered at runtime, per tenant.

Beat's leader reads the schedule store every tick, so a change takes effect within a tick
(`BEAT__MAX_INTERVAL_SECONDS`) without a restart. The schedule file's entries are listed
here too, read-only (`source: file`).
"""

import re
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from conveyor.api.auth import Reader, Writer, limits_for
from conveyor.api.deps import JSON_BODY, PROBLEM_RESPONSES, ApiState, State
from conveyor.api.problems import ProblemError
from conveyor.api.submitting import accept_limits, answer
from conveyor.api.workflows import workflow_answer, workflow_limits
from conveyor.core.apikeys import TENANT_PATTERN, Principal, Scope
from conveyor.core.queues import Queue
from conveyor.core.schedule_runs import UnknownTaskError, run_key, schedule_run
from conveyor.core.schedules import (
    CatchUpPolicy,
    OverlapPolicy,
    Schedule,
    ScheduleDefinition,
    ScheduleSource,
)
from conveyor.core.workflow_plan import InvalidWorkflowError, WorkflowRequest
from conveyor.jobstore.results import AcceptVerdict
from conveyor.jobstore.schedule_store import (
    PutRefusal,
    ScheduleRefusedError,
    StoredSchedule,
    new_schedule_id,
    timing_changed,
)

_SCHEDULE_ID = re.compile(r"^(sch_[0-9a-f]{20}|file\.[A-Za-z0-9][A-Za-z0-9_.-]{0,99})$")


class SchedulePage(BaseModel):
    """Schedules, by tenant and name."""

    items: list[Schedule]


class SchedulePatch(BaseModel):
    """A change to a schedule: the fields given replace its own (null clears an optional
    one: set `cron` and null `interval_seconds` to switch timing).
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    task: str | None = None
    args: dict[str, Any] | None = None
    workflow: WorkflowRequest | None = None
    queue: Queue | None = None
    cron: str | None = None
    timezone: str | None = None
    interval_seconds: float | None = None
    overlap: OverlapPolicy | None = None
    catch_up: CatchUpPolicy | None = None
    jitter_seconds: float | None = None
    paused: bool | None = None


class TriggeredRun(BaseModel):
    """The run a trigger started."""

    job_id: str | None = None
    workflow_id: str | None = None


def schedules_router() -> APIRouter:
    """The /v1/schedules routes."""
    router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=PROBLEM_RESPONSES)

    @router.get("", response_model=SchedulePage, summary="List schedules",
                operation_id="list_schedules")  # fmt: skip
    async def list_schedules(
        state: State,
        principal: Reader,
        tenant: Annotated[
            str | None,
            Query(pattern=TENANT_PATTERN, description="Another tenant's (admin only)."),
        ] = None,
    ) -> SchedulePage:
        """The caller's schedules (the schedule file's, read-only, among them when they run
        for the caller's tenant); an admin key lists every tenant's, or one tenant's.
        """
        scope = _tenant_scope(principal, tenant)
        now = await state.schedules.now_ms() / 1000
        return SchedulePage(items=[s.public(now) for s in await state.schedules.list(scope)])

    @router.post("", status_code=201, response_model=Schedule, summary="Create a schedule",
                 operation_id="create_schedule", dependencies=[JSON_BODY])  # fmt: skip
    async def create_schedule(
        body: ScheduleDefinition,
        state: State,
        principal: Writer,
        response: Response,
        tenant: Annotated[
            str | None,
            Query(pattern=TENANT_PATTERN, description="Create it for another tenant (admin)."),
        ] = None,
    ) -> Schedule:
        """A new schedule, run by beat from its next tick on. 422 for an unknown task,
        invalid arguments or workflow, a bad cron expression or time zone, or an interval
        under `SCHEDULES__MIN_INTERVAL_SECONDS`; 409 for a name the tenant already uses or
        past `SCHEDULES__MAX_PER_TENANT`.
        """
        owner = _tenant_scope(principal, tenant) or principal.tenant
        _check_runnable(state, body, owner)
        schedule_id = new_schedule_id()
        limit = state.settings.schedules.max_per_tenant
        await _put(state, schedule_id, owner, body, "", limit=limit)
        response.headers["Location"] = f"/v1/schedules/{schedule_id}"
        return await _read(state, schedule_id, principal)

    @router.get("/{schedule_id}", response_model=Schedule, summary="Get a schedule",
                operation_id="get_schedule")  # fmt: skip
    async def get_schedule(schedule_id: str, state: State, principal: Reader) -> Schedule:
        """The schedule, its next run times and its last run."""
        return await _read(state, schedule_id, principal)

    @router.patch("/{schedule_id}", response_model=Schedule, summary="Change a schedule",
                  operation_id="update_schedule", dependencies=[JSON_BODY])  # fmt: skip
    async def update_schedule(
        schedule_id: str,
        body: SchedulePatch,
        state: State,
        principal: Writer,
        if_match: Annotated[
            str | None,
            Header(
                alias="If-Match", description="The version the change is based on.", max_length=40
            ),
        ] = None,
    ) -> Schedule:
        """Change the fields given; beat uses the change from its next tick. A change of
        timing starts an interval afresh from now. 412 when `If-Match` names another
        version than the current one; 409 for a `file` schedule (change the file).
        """
        current = await _owned(state, schedule_id, principal)
        _writable(current)
        merged = {**current.definition.model_dump(), **body.model_dump(exclude_unset=True)}
        definition = _validated(merged)
        _check_runnable(state, definition, current.tenant)
        expected = (if_match or str(current.version)).strip('"')
        retimed = timing_changed(current.definition, definition)
        anchor = None if retimed else current.anchor_ms
        # The same timing and pause: the pending run stays as it was (its tick and jitter).
        keep = None
        tick, due = current.next_tick_ms, current.next_due_ms
        if not retimed and definition.paused == current.definition.paused and tick and due:
            keep = (tick, due)
        await _put(state, schedule_id, current.tenant, definition, expected, anchor_ms=anchor,
                   keep=keep)  # fmt: skip
        return await _read(state, schedule_id, principal)

    @router.post("/{schedule_id}/pause", response_model=Schedule, summary="Pause a schedule",
                 operation_id="pause_schedule")  # fmt: skip
    async def pause_schedule(schedule_id: str, state: State, principal: Writer) -> Schedule:
        """No run until it is resumed (its ticks meanwhile are not caught up). Idempotent."""
        return await _set_paused(state, schedule_id, principal, paused=True)

    @router.post("/{schedule_id}/resume", response_model=Schedule, summary="Resume a schedule",
                 operation_id="resume_schedule")  # fmt: skip
    async def resume_schedule(schedule_id: str, state: State, principal: Writer) -> Schedule:
        """Run again from the next tick after now. Idempotent."""
        return await _set_paused(state, schedule_id, principal, paused=False)

    @router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule",
                   operation_id="delete_schedule")  # fmt: skip
    async def delete_schedule(schedule_id: str, state: State, principal: Writer) -> Response:
        """No more runs; runs already started are not touched."""
        current = await _owned(state, schedule_id, principal)
        _writable(current)
        await state.schedules.delete(schedule_id)
        return Response(status_code=204)

    @router.post("/{schedule_id}/trigger", status_code=202, response_model=TriggeredRun,
                 summary="Run a schedule now", operation_id="trigger_schedule")  # fmt: skip
    async def trigger_schedule(schedule_id: str, state: State, principal: Writer) -> TriggeredRun:
        """Start one run now, outside its ticks (whatever its overlap policy and pause;
        its ticks are unchanged). The run counts against the tenant's limits like any job.
        """
        current = await _owned(state, schedule_id, principal)
        return await _trigger(state, current)

    return router


def _tenant_scope(principal: Principal, tenant: str | None) -> str | None:
    """The tenant whose schedules a call sees: the caller's own, or (admin) any or all."""
    if principal.can(Scope.ADMIN):
        return tenant
    if tenant is not None and tenant != principal.tenant:
        raise ProblemError(403, "Forbidden", "Another tenant's schedules need the admin scope.",
                           slug="forbidden")  # fmt: skip
    return principal.tenant


def _not_found(schedule_id: str) -> ProblemError:
    return ProblemError(404, "Schedule not found", f"No schedule {schedule_id!r}.",
                        slug="schedule-not-found")  # fmt: skip


async def _owned(state: ApiState, schedule_id: str, principal: Principal) -> StoredSchedule:
    """The schedule, or a 404: also another tenant's (its existence is not confirmed)."""
    found = await state.schedules.get(schedule_id) if _SCHEDULE_ID.match(schedule_id) else None
    if found is None or not (principal.can(Scope.ADMIN) or found.tenant == principal.tenant):
        raise _not_found(schedule_id)
    return found


async def _read(state: ApiState, schedule_id: str, principal: Principal) -> Schedule:
    found = await _owned(state, schedule_id, principal)
    return found.public(await state.schedules.now_ms() / 1000)


def _writable(schedule: StoredSchedule) -> None:
    if schedule.source is ScheduleSource.FILE:
        raise ProblemError(409, "Schedule is read-only",
                           f"{schedule.id} comes from the schedule file: change the file.",
                           slug="schedule-read-only")  # fmt: skip


def _validated(fields: dict[str, Any]) -> ScheduleDefinition:
    try:
        return ScheduleDefinition.model_validate(fields)
    except ValidationError as exc:
        errors = [{"pointer": "#/" + "/".join(str(p) for p in e["loc"]), "detail": e["msg"]}
                  for e in exc.errors()]  # fmt: skip
        raise ProblemError(422, "Invalid schedule", "The changed schedule is not valid; see "
                           "errors.", slug="validation-error", errors=errors) from None  # fmt: skip


def _check_runnable(state: ApiState, definition: ScheduleDefinition, tenant: str) -> None:
    """422 unless a run of `definition` would be accepted as the API takes jobs (task,
    arguments, workflow) and its interval is not under the deployment's floor.
    """
    floor = state.settings.schedules.min_interval_seconds
    errors: list[dict[str, str]] = []
    if definition.interval_seconds is not None and definition.interval_seconds < floor:
        errors.append({"pointer": "#/interval_seconds", "detail": f"at least {floor:g} s"})
    try:
        schedule_run(definition, tenant, state.catalog, state.settings, run_key("check", 0))
    except UnknownTaskError:
        errors.append({"pointer": "#/task", "detail": f"unknown task {definition.task!r}; "
                       f"the tasks are: {', '.join(state.catalog)}"})  # fmt: skip
    except InvalidWorkflowError as exc:
        errors += [{"pointer": "#/workflow" + p.removeprefix("#"), "detail": d}
                   for p, d in exc.errors]  # fmt: skip
    except ValidationError as exc:
        errors += [{"pointer": "#/args/" + "/".join(str(p) for p in e["loc"]),
                    "detail": e["msg"]} for e in exc.errors()]  # fmt: skip
    if errors:
        raise ProblemError(422, "Invalid schedule", "The schedule cannot run; see errors.",
                           slug="validation-error", errors=errors)  # fmt: skip


async def _put(state: ApiState, schedule_id: str, tenant: str, definition: ScheduleDefinition,
               expected: str, limit: int = 0, anchor_ms: int | None = None,
               keep: tuple[int, int] | None = None) -> int:  # fmt: skip
    jitter = secrets.randbelow(int(definition.jitter_seconds * 1000) + 1) / 1000
    try:
        return await state.schedules.put(schedule_id, tenant, ScheduleSource.API, definition,
                                         expected, limit, anchor_ms, jitter, keep)  # fmt: skip
    except ScheduleRefusedError as exc:
        raise _refusal(exc, schedule_id, definition, limit) from None


def _refusal(exc: ScheduleRefusedError, schedule_id: str, definition: ScheduleDefinition,
             limit: int) -> ProblemError:  # fmt: skip
    if exc.reason is PutRefusal.NAME_TAKEN:
        return ProblemError(409, "Schedule name taken",
                            f"This tenant already has a schedule named {definition.name!r}.",
                            slug="schedule-name-taken",
                            errors=[{"pointer": "#/name", "detail": "already used"}])  # fmt: skip
    if exc.reason is PutRefusal.TENANT_LIMIT:
        return ProblemError(409, "Too many schedules",
                            f"This tenant has its {limit} schedules; delete one first.",
                            slug="schedule-limit")  # fmt: skip
    if exc.reason is PutRefusal.CHANGED:
        return ProblemError(412, "Schedule changed",
                            f"The schedule is at version {exc.detail}; read it again and "
                            "retry with that version in If-Match.",
                            slug="schedule-changed")  # fmt: skip
    if exc.reason is PutRefusal.READ_ONLY:
        return ProblemError(409, "Schedule is read-only", "It comes from the schedule file.",
                            slug="schedule-read-only")  # fmt: skip
    return _not_found(schedule_id)


async def _set_paused(state: ApiState, schedule_id: str, principal: Principal,
                      paused: bool) -> Schedule:  # fmt: skip
    current = await _owned(state, schedule_id, principal)
    _writable(current)
    if current.definition.paused != paused:
        definition = current.definition.model_copy(update={"paused": paused})
        # A resume starts from the next tick after now: the paused time is not caught up.
        await _put(state, schedule_id, current.tenant, definition, str(current.version),
                   anchor_ms=current.anchor_ms)  # fmt: skip
    return await _read(state, schedule_id, principal)


async def _trigger(state: ApiState, schedule: StoredSchedule) -> TriggeredRun:
    key = run_key(schedule.id, "manual-" + secrets.token_hex(8))
    try:
        run = schedule_run(schedule.definition, schedule.tenant, state.catalog, state.settings,
                           key)  # fmt: skip
    except (UnknownTaskError, InvalidWorkflowError, ValidationError) as exc:
        raise ProblemError(409, "Schedule cannot run", str(exc), slug="schedule-broken") from None
    tenant = limits_for(state, schedule.tenant)
    if run.plan is not None:
        depths = {str(q): state.settings.limits.max_queue_depth.for_queue(q) for q in Queue}
        outcome = await state.store.submit_workflow(run.plan, workflow_limits(tenant), depths)
        await workflow_answer(state, outcome, tenant, len(run.plan.steps))  # raises a refusal
        await state.schedules.record_run(schedule.id, outcome.workflow_id, "workflow")
        return TriggeredRun(workflow_id=outcome.workflow_id)
    assert run.spec is not None
    assert run.submission is not None
    limits = accept_limits(state, tenant, run.submission)
    accepted = await state.store.submit(run.spec, run.submission, limits)
    answered = await answer(state, accepted, run.submission, tenant)
    if answered.problem is not None or accepted.verdict is not AcceptVerdict.CREATED:
        raise answered.problem or ProblemError(409, "Not started", "The run was not started.")
    await state.schedules.record_run(schedule.id, accepted.job_id, "job")
    return TriggeredRun(job_id=accepted.job_id)
