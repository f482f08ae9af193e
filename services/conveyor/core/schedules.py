"""Periodic runs: what a schedule is (its definition, as the API and the schedule file take
it) and when it ticks (cron expressions in a time zone, or fixed intervals).

A schedule's ticks are nominal instants: a cron tick is a wall-clock time in the schedule's
time zone (daylight-saving changes follow the zone: a 02:30 tick on a spring-forward night
runs at the first instant after the gap, croniter's rule), an interval's ticks are whole
multiples of the interval after the schedule's anchor (its creation, or its last timing
change). Beat starts a tick's run up to `jitter_seconds` after it, with the tick itself in
the run's idempotency key, so a tick runs once however many beats try.
"""

import itertools
import math
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.core.queues import Queue
from conveyor.core.workflow_plan import WorkflowRequest

SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# A run's idempotency key: the schedule and its tick (ms), or `manual` and a request id.
RUN_KEY = "schedule:{schedule_id}:{tick}"
MAX_JITTER_SECONDS = 3600.0
# Run times a schedule's page shows.
SHOWN_NEXT_RUNS = 5


class OverlapPolicy(StrEnum):
    """What a tick does while the schedule's previous run has not finished."""

    ALLOW = "allow"
    SKIP = "skip"


class CatchUpPolicy(StrEnum):
    """What happens to ticks missed while no beat ran (later than the grace period)."""

    SKIP = "skip"
    RUN_ONCE = "run_once"


class ScheduleSource(StrEnum):
    """Who owns a schedule: the API's callers, or the platform's schedule file (read-only)."""

    API = "api"
    FILE = "file"


class ScheduleDefinition(BaseModel):
    """What a schedule runs and when: the body of POST /v1/schedules, and one entry of the
    schedule file.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=SCHEDULE_NAME_PATTERN, description="Unique per tenant.")
    task: str | None = Field(None, description="The task of each run (or `workflow`).")
    args: dict[str, Any] = Field(default_factory=dict, description="The task's arguments.")
    workflow: WorkflowRequest | None = Field(
        None, description="A workflow started by each run, as POST /v1/workflows takes it."
    )
    queue: Queue | None = Field(None, description="Queue tier; defaults to the task's own.")
    cron: str | None = Field(
        None,
        description="Five-field cron expression (minute hour day month weekday), in `timezone`.",
        max_length=200,
    )
    timezone: str = Field("UTC", description="IANA time zone of `cron`.", max_length=64)
    interval_seconds: float | None = Field(
        None, gt=0, le=366 * 86400, description="Or: run every this many seconds."
    )
    overlap: OverlapPolicy = Field(
        OverlapPolicy.ALLOW,
        description="`skip`: a tick does not run while the previous run is unfinished.",
    )
    catch_up: CatchUpPolicy = Field(
        CatchUpPolicy.RUN_ONCE,
        description="Ticks missed while beat was down: `run_once` runs the latest of them "
        "once; `skip` runs none.",
    )
    jitter_seconds: float = Field(
        0.0,
        ge=0,
        le=MAX_JITTER_SECONDS,
        description="Each run starts up to this many seconds after its tick (spreads load).",
    )
    paused: bool = Field(False, description="A paused schedule has no next run.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            if len(value.split()) != 5:
                raise ValueError("cron needs five fields: minute hour day month weekday")
            if not croniter.is_valid(value):
                raise ValueError(f"not a valid cron expression: {value!r}")
            try:  # valid fields may still never match a date (`0 0 30 2 *`)
                croniter(value, datetime(2026, 1, 1, tzinfo=UTC)).get_next(float)
            except Exception:  # noqa: BLE001 - croniter's own errors, whatever their kind
                raise ValueError(f"{value!r} never runs (no date matches it)") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone_of(value)
        return value

    @model_validator(mode="after")
    def _one_timing_one_target(self) -> Self:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("set exactly one of cron and interval_seconds")
        if (self.task is None) == (self.workflow is None):
            raise ValueError("set exactly one of task and workflow")
        if self.workflow is not None and (self.args or self.queue):
            raise ValueError("a workflow's steps carry their own args and queues")
        if self.jitter_seconds and self.jitter_seconds >= self._shortest_spacing():
            raise ValueError("jitter_seconds must be shorter than the time between two ticks "
                             "(a longer one would merge ticks)")  # fmt: skip
        return self

    def _shortest_spacing(self) -> float:
        """The interval, or the shortest time between a cron's ticks over a sample of them."""
        if self.interval_seconds is not None:
            return self.interval_seconds
        ticks = self.timing().upcoming(datetime(2026, 1, 1, tzinfo=UTC).timestamp(), 0, 48)
        return min(b - a for a, b in itertools.pairwise(ticks))

    def timing(self) -> "Timing":
        """When this definition ticks."""
        return Timing(self.cron, self.timezone, self.interval_seconds)


@cache
def zone_of(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: `Europe` is a folder
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)") from None


class Timing:
    """The ticks of a cron expression in a zone, or of an interval from an anchor (epoch
    seconds). Every instant here is epoch seconds.
    """

    def __init__(self, cron: str | None, timezone: str, interval: float | None) -> None:
        self.cron = cron or ""  # set whenever interval is None (the definition checks)
        self.zone = zone_of(timezone)
        self.interval = interval
        # A cron of fixed hours runs once on the night the clocks go back, as cron does: the
        # second pass through the repeated hour is no new tick (croniter gives both). A cron
        # of every hour (`*`) runs each real hour.
        self._once_a_wall_time = bool(cron) and self.cron.split()[1] != "*"

    def _repeated(self, tick: float) -> bool:
        """Whether `tick` is the second occurrence of its wall time (clocks went back)."""
        return self._once_a_wall_time and datetime.fromtimestamp(tick, self.zone).fold == 1

    def next_after(self, instant: float, anchor: float) -> float:
        """The first tick strictly after `instant`."""
        if self.interval is not None:
            if instant < anchor:
                return anchor + self.interval
            steps = math.floor((instant - anchor) / self.interval) + 1
            return anchor + steps * self.interval
        series = croniter(self.cron, datetime.fromtimestamp(instant, self.zone))
        tick = float(series.get_next(float))
        while self._repeated(tick):
            tick = float(series.get_next(float))
        return tick

    def latest_at_or_before(self, instant: float, anchor: float) -> float | None:
        """The last tick at or before `instant` (None before an interval's first tick)."""
        if self.interval is not None:
            if instant < anchor + self.interval:
                return None
            return anchor + math.floor((instant - anchor) / self.interval) * self.interval
        # croniter's get_prev is strictly before: step from just after the instant.
        series = croniter(self.cron, datetime.fromtimestamp(instant + 0.001, self.zone))
        tick = float(series.get_prev(float))
        while self._repeated(tick):
            tick = float(series.get_prev(float))
        return tick

    def upcoming(self, instant: float, anchor: float, count: int = SHOWN_NEXT_RUNS) -> list[float]:
        """The next `count` ticks after `instant`."""
        ticks: list[float] = []
        for _ in range(count):
            instant = self.next_after(instant, anchor)
            ticks.append(instant)
        return ticks


class TickOutcome(StrEnum):
    """What beat did with a due schedule (the `outcome` of its tick counter)."""

    RAN = "ran"
    SKIPPED_OVERLAP = "skipped_overlap"
    MISSED = "missed"
    FAILED = "failed"


class TickPlan(BaseModel):
    """What to do with a due schedule: the tick to run (if any) and what comes next."""

    tick: float | None
    missed: bool
    next_tick: float


def plan_tick(timing: Timing, due_tick: float, now: float, anchor: float,
              catch_up: CatchUpPolicy, grace: float) -> TickPlan:  # fmt: skip
    """The tick to run for a schedule whose `due_tick` has come (`now` is Redis' clock).

    At most one run, for the latest tick at or before `now`: ticks beat could not start in
    time collapse into it. That tick is late when it is more than `grace` old (no beat ran
    then); a late tick runs once under `run_once` and not at all under `skip`.
    """
    latest = timing.latest_at_or_before(now, anchor)
    tick = latest if latest is not None and latest >= due_tick else due_tick
    late = now - tick > grace
    next_tick = timing.next_after(max(now, tick), anchor)
    if late and catch_up is CatchUpPolicy.SKIP:
        return TickPlan(tick=None, missed=True, next_tick=next_tick)
    return TickPlan(tick=tick, missed=False, next_tick=next_tick)


def iso(instant: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time (None stays None)."""
    if instant is None:
        return None
    return datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z")


class Schedule(ScheduleDefinition):
    """A stored schedule: its definition, owner and when it runs (GET /v1/schedules/{id})."""

    id: str = Field(..., description="`sch_…` for the API's, `file.<name>` for the file's.")
    tenant: str = Field(..., description="The tenant that owns the schedule and its runs.")
    source: ScheduleSource = Field(..., description="`file` schedules are read-only here.")
    version: int = Field(..., description="Bumped by every change (PATCH takes `If-Match`).")
    next_run_at: str | None = Field(None, description="The next tick (none while paused).")
    next_runs: list[str] = Field(default_factory=list, description="The next few ticks.")
    last_run_at: str | None = Field(None, description="When the last run was started.")
    last_run_id: str | None = Field(None, description="The last run's job or workflow id.")
    last_run_kind: str | None = Field(None, description="`job` or `workflow`.")
    last_outcome: str | None = Field(
        None,
        description="What the last tick did: `ran`, `skipped_overlap` (the previous run was "
        "unfinished), `missed` (beat was down; catch-up `skip`), `failed` (could not submit; "
        "see beat's log) or `triggered` (run by hand).",
    )
    created_at: str | None = None
    updated_at: str | None = None
