"""Runtime schedules in Redis: the verbs of the API (create, change, delete, list, read) and
of beat's leader (what is due, advance), over the schedule scripts. Key names come from
`keys.py`; times that decide (created, due, advanced) are Redis' clock.
"""

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson
import redis
import redis.asyncio

from conveyor.core.schedules import (
    Schedule,
    ScheduleDefinition,
    ScheduleSource,
    iso,
)
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.model import text_of
from conveyor.jobstore.scripts import (
    SCHEDULE_ADVANCE,
    SCHEDULE_DELETE,
    SCHEDULE_DUE,
    SCHEDULE_PUT,
    SCHEDULE_RAN,
)

FIELDS = ("version", "tenant", "name", "source", "definition", "paused", "anchor", "next_tick",
          "next_due", "last_tick", "last_outcome", "last_run_id", "last_run_kind",
          "last_run_at", "created_at", "updated_at")  # fmt: skip
# The id of the schedule file's entry `name` (API ids start with `sch_`: never the same).
FILE_ID = "file.{name}"


def new_schedule_id() -> str:
    """A fresh id for a schedule created through the API."""
    return "sch_" + secrets.token_hex(10)


class PutRefusal(IntEnum):
    """Why schedule_put.lua refused."""

    EXISTS = -1
    NAME_TAKEN = -2
    TENANT_LIMIT = -3
    NOT_FOUND = -4
    CHANGED = -5
    READ_ONLY = -6


class ScheduleRefusedError(Exception):
    """A create or change the store refused (`reason`)."""

    def __init__(self, reason: PutRefusal, detail: str = "") -> None:
        super().__init__(f"{reason.name}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule as beat reads it: the definition with its runtime fields (ms)."""

    id: str
    tenant: str
    source: ScheduleSource
    version: int
    definition: ScheduleDefinition
    anchor_ms: int
    next_tick_ms: int | None
    next_due_ms: int | None
    last_run_id: str | None
    last_run_kind: str | None
    raw: dict[str, str]

    def public(self, now: float) -> Schedule:
        """The API's view, with the next few run times after `now` (epoch seconds)."""
        raw = self.raw
        next_runs: list[str] = []
        if self.next_tick_ms is not None and not self.definition.paused:
            first = self.next_tick_ms / 1000
            later = self.definition.timing().upcoming(first, self.anchor_ms / 1000, 4)
            next_runs = [iso(t) or "" for t in [first, *later]]
        return Schedule(
            **self.definition.model_dump(),
            id=self.id,
            tenant=self.tenant,
            source=self.source,
            version=self.version,
            next_run_at=next_runs[0] if next_runs else None,
            next_runs=next_runs,
            last_run_at=_iso_ms(raw.get("last_run_at")),
            last_run_id=raw.get("last_run_id") or None,
            last_run_kind=raw.get("last_run_kind") or None,
            last_outcome=raw.get("last_outcome") or None,
            created_at=_iso_ms(raw.get("created_at")),
            updated_at=_iso_ms(raw.get("updated_at")),
        )


def _iso_ms(value: str | None) -> str | None:
    return iso(int(value) / 1000) if value else None


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def decode(schedule_id: str, values: Sequence[Any]) -> StoredSchedule | None:
    """A schedule from its hash's FIELDS values (None when it does not exist)."""
    raw = {name: text_of(v) for name, v in zip(FIELDS, values, strict=True) if v is not None}
    if "version" not in raw:
        return None
    definition = ScheduleDefinition.model_validate_json(raw["definition"])
    return StoredSchedule(
        id=schedule_id,
        tenant=raw["tenant"],
        source=ScheduleSource(raw["source"]),
        version=int(raw["version"]),
        definition=definition,
        anchor_ms=int(raw.get("anchor") or 0),
        next_tick_ms=_int(raw.get("next_tick")),
        next_due_ms=_int(raw.get("next_due")),
        last_run_id=raw.get("last_run_id") or None,
        last_run_kind=raw.get("last_run_kind") or None,
        raw=raw,
    )


def put_args(
    keys: KeySpace,
    schedule_id: str,
    tenant: str,
    source: ScheduleSource,
    definition: ScheduleDefinition,
    now_ms: int,
    anchor_ms: int,
    expected: str,
    limit: int,
    jitter: float,
    keep: tuple[int, int] | None = None,
) -> list[Any]:
    """ARGV of schedule_put.lua: the next tick after `now_ms` (none while paused), its due
    time `jitter` seconds (drawn by the caller) later; or `keep`'s (tick, due), a pending
    run an edit leaves alone.
    """
    next_tick = next_due = ""
    if keep is not None and not definition.paused:
        next_tick, next_due = str(keep[0]), str(keep[1])
    elif not definition.paused:
        tick = definition.timing().next_after(now_ms / 1000, anchor_ms / 1000)
        next_tick = str(round(tick * 1000))
        next_due = str(round((tick + jitter) * 1000))
    return [keys.prefix, schedule_id, tenant, definition.name, str(source),
            definition.model_dump_json(exclude_none=True), "1" if definition.paused else "0",
            str(anchor_ms), next_tick, next_due, expected, limit]  # fmt: skip


def parse_put(reply: Sequence[Any], name: str) -> int:
    """The new version, or ScheduleRefusedError."""
    code = int(reply[0])
    if code == 1:
        return int(reply[1])
    reason = PutRefusal(code)
    detail = text_of(reply[1]) if len(reply) > 1 else ""
    raise ScheduleRefusedError(reason, detail or name)


def timing_changed(old: ScheduleDefinition, new: ScheduleDefinition) -> bool:
    """Whether `new` ticks differently from `old` (an interval then starts from now)."""
    return (old.cron, old.timezone, old.interval_seconds) != (
        new.cron,
        new.timezone,
        new.interval_seconds,
    )


def _redis_ms(reply: Sequence[Any]) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


class ScheduleStore:
    """The blocking verbs: beat's leader (due, advance, the schedule file's sync)."""

    def __init__(self, client: "redis.Redis", keys: KeySpace) -> None:
        self.client = client
        self.keys = keys

    def now_ms(self) -> int:
        """Redis' clock (ms)."""
        return _redis_ms(self.client.time())

    def get(self, schedule_id: str) -> StoredSchedule | None:
        """One schedule, or None."""
        return decode(schedule_id, self.client.hmget(self.keys.schedule(schedule_id), FIELDS))

    def ids(self) -> list[str]:
        """Every schedule's id."""
        return sorted(text_of(m) for m in self.client.smembers(self.keys.schedules_all))

    def put(self, schedule_id: str, tenant: str, source: ScheduleSource,
            definition: ScheduleDefinition, expected: str, limit: int = 0,
            anchor_ms: int | None = None, jitter: float = 0.0) -> int:  # fmt: skip
        """Create or change a schedule; its new version (ScheduleRefusedError)."""
        now = self.now_ms()
        args = put_args(
            self.keys,
            schedule_id,
            tenant,
            source,
            definition,
            now,
            now if anchor_ms is None else anchor_ms,
            expected,
            limit,
            jitter,
        )
        return parse_put(SCHEDULE_PUT.run(self.client, args), definition.name)

    def delete(self, schedule_id: str) -> bool:
        """Delete a schedule; False when there was none."""
        return bool(SCHEDULE_DELETE.run(self.client, [self.keys.prefix, schedule_id]))

    def due(self, most: int) -> tuple[int, list[tuple[str, int]]]:
        """Redis' clock (ms) and up to `most` schedules due by it, with their due times."""
        reply = SCHEDULE_DUE.run(self.client, [self.keys.prefix, most])
        now, rest = int(reply[0]), reply[1:]
        return now, [(text_of(rest[i]), int(float(rest[i + 1]))) for i in range(0, len(rest), 2)]

    def advance(self, schedule: StoredSchedule, next_tick_ms: int, next_due_ms: int,
                tick_ms: int, outcome: str, run_id: str | None, run_kind: str) -> bool:  # fmt: skip
        """Move a due schedule on to its next tick; False when it changed meanwhile."""
        args = [self.keys.prefix, schedule.id, str(schedule.version),
                str(schedule.next_due_ms), str(next_tick_ms), str(next_due_ms), str(tick_ms),
                outcome, run_id or "", run_kind]  # fmt: skip
        return bool(SCHEDULE_ADVANCE.run(self.client, args))


class AsyncScheduleStore:
    """The asyncio verbs: the API's."""

    def __init__(self, client: "redis.asyncio.Redis", keys: KeySpace) -> None:
        self.client = client
        self.keys = keys

    async def now_ms(self) -> int:
        """Redis' clock (ms)."""
        return _redis_ms(await self.client.time())

    async def get(self, schedule_id: str) -> StoredSchedule | None:
        """One schedule, or None."""
        values = await self.client.hmget(self.keys.schedule(schedule_id), FIELDS)
        return decode(schedule_id, values)

    async def list(self, tenant: str | None) -> list[StoredSchedule]:
        """Every schedule of `tenant` (every tenant's with None), by tenant and name."""
        key = self.keys.schedules_all if tenant is None else self.keys.schedules_tenant(tenant)
        ids = sorted(text_of(m) for m in await self.client.smembers(key))
        async with self.client.pipeline(transaction=False) as pipe:
            for schedule_id in ids:
                pipe.hmget(self.keys.schedule(schedule_id), FIELDS)
            replies = await pipe.execute()
        found = [decode(i, values) for i, values in zip(ids, replies, strict=True)]
        return sorted((s for s in found if s), key=lambda s: (s.tenant, s.definition.name))

    async def put(self, schedule_id: str, tenant: str, source: ScheduleSource,
                  definition: ScheduleDefinition, expected: str, limit: int = 0,
                  anchor_ms: int | None = None, jitter: float = 0.0,
                  keep: tuple[int, int] | None = None) -> int:  # fmt: skip
        """Create or change a schedule; its new version (ScheduleRefusedError). `keep`: the
        pending tick and due time to keep (an edit that leaves the timing alone).
        """
        now = await self.now_ms()
        anchor = now if anchor_ms is None else anchor_ms
        args = put_args(self.keys, schedule_id, tenant, source, definition, now, anchor,
                        expected, limit, jitter, keep)  # fmt: skip
        return parse_put(await SCHEDULE_PUT.run_async(self.client, args), definition.name)

    async def delete(self, schedule_id: str) -> bool:
        """Delete a schedule; False when there was none."""
        return bool(await SCHEDULE_DELETE.run_async(self.client, [self.keys.prefix, schedule_id]))

    async def record_run(self, schedule_id: str, run_id: str, run_kind: str) -> bool:
        """Record a run started by hand as the schedule's last."""
        args = [self.keys.prefix, schedule_id, run_id, run_kind]
        return bool(await SCHEDULE_RAN.run_async(self.client, args))


def definition_json(definition: ScheduleDefinition) -> bytes:
    """A definition as stored (what the schedule file's sync compares)."""
    return orjson.dumps(orjson.loads(definition.model_dump_json(exclude_none=True)))
