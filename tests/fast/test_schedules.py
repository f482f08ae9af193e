"""/v1/schedules in process (issue 21): create, read, change, pause, resume, delete and
trigger, per tenant; validation; what beat's leader does with a due schedule (overlap,
catch-up, fencing) on the real schedule store; tick arithmetic (cron in a zone, intervals).
"""

import itertools
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from conveyor.beat.scheduler import ConveyorScheduler
from conveyor.core.schedules import CatchUpPolicy, Timing, plan_tick
from conveyor.core.settings import Settings
from tests.fast.harness import InProcessApi, problem
from tests.support.auth import ADMIN_KEY, TEAM_A_KEY, TEAM_B_KEY

PING: dict[str, Any] = {"name": "ping", "task": "demo.echo", "args": {"payload": 1},
                        "interval_seconds": 60}  # fmt: skip


PING_JOB: dict[str, Any] = {"task": "demo.echo", "args": {"payload": 1}}


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def _create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/v1/schedules/{created['id']}"
    return created


async def test_create_read_list_and_next_runs(api: InProcessApi) -> None:
    async with api.client(TEAM_A_KEY) as team_a:
        created = await _create(team_a, {**PING, "overlap": "skip", "jitter_seconds": 5})
        assert created["id"].startswith("sch_")
        assert created["tenant"] == "team-a"
        assert created["source"] == "api"
        assert created["overlap"] == "skip"
        assert created["catch_up"] == "run_once"
        assert created["version"] == 1
        runs = [_epoch(t) for t in created["next_runs"]]
        assert len(runs) == 5
        assert [b - a for a, b in itertools.pairwise(runs)] == [60.0] * 4
        assert created["next_run_at"] == created["next_runs"][0]
        listed = (await team_a.get("/v1/schedules")).json()["items"]
        assert [s["id"] for s in listed] == [created["id"]]
        got = (await team_a.get(f"/v1/schedules/{created['id']}")).json()
        assert got["name"] == "ping"
        assert got["args"] == {"payload": 1}


async def test_cron_in_a_time_zone_follows_daylight_saving() -> None:
    timing = Timing("30 9 * * *", "Europe/Paris", None)
    # 2026-03-28 is the last day of winter time in Paris (UTC+1), the 29th the first of
    # summer time (UTC+2): 09:30 local is 08:30 UTC, then 07:30 UTC.
    start = datetime(2026, 3, 28, 0, 0, tzinfo=UTC).timestamp()
    first, second = timing.upcoming(start, 0, 2)
    assert datetime.fromtimestamp(first, UTC).strftime("%d %H:%M") == "28 08:30"
    assert datetime.fromtimestamp(second, UTC).strftime("%d %H:%M") == "29 07:30"


def test_interval_ticks_keep_their_phase_from_the_anchor() -> None:
    timing = Timing(None, "UTC", 10.0)
    assert timing.next_after(1003.0, 1000.0) == 1010.0
    assert timing.next_after(1010.0, 1000.0) == 1020.0
    assert timing.latest_at_or_before(1039.0, 1000.0) == 1030.0
    assert timing.latest_at_or_before(1005.0, 1000.0) is None


def test_catch_up_runs_the_latest_missed_tick_once_or_skips_it() -> None:
    timing = Timing(None, "UTC", 60.0)
    # Due at 1060; beat comes back at 1500: ticks 1060…1440 were missed (grace 30 s).
    once = plan_tick(timing, 1060.0, 1500.0, 1000.0, CatchUpPolicy.RUN_ONCE, 30.0)
    assert once.tick == 1480.0  # the latest: on time (20 s ago), so it runs
    assert once.next_tick == 1540.0
    late = plan_tick(timing, 1060.0, 1525.0, 1000.0, CatchUpPolicy.RUN_ONCE, 30.0)
    assert late.tick == 1480.0  # 45 s late: run once all the same
    skip = plan_tick(timing, 1060.0, 1525.0, 1000.0, CatchUpPolicy.SKIP, 30.0)
    assert skip.tick is None
    assert skip.missed
    assert skip.next_tick == 1540.0
    on_time = plan_tick(timing, 1480.0, 1485.0, 1000.0, CatchUpPolicy.SKIP, 30.0)
    assert on_time.tick == 1480.0


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({**PING, "task": "no.such"}, "#/task"),
        ({**PING, "args": {"payload": 1, "nope": 2}}, "#/args/nope"),
        ({**PING, "interval_seconds": 1}, "#/interval_seconds"),
        ({**PING, "interval_seconds": None, "cron": "61 * * * *"}, "#/cron"),
        ({**PING, "interval_seconds": None, "cron": "* * * *"}, "#/cron"),
        ({**PING, "interval_seconds": None, "cron": "* * * * *", "timezone": "Mars/Base"},
         "#/timezone"),
        ({**PING, "name": "no spaces"}, "#/name"),
        ({"name": "x", "task": "demo.echo", "args": {"payload": 1}}, "#"),
    ],
)  # fmt: skip
async def test_invalid_schedules_are_a_422_with_a_pointer(
    client: httpx.AsyncClient, body: dict[str, Any], pointer: str
) -> None:
    response = await client.post("/v1/schedules", json=body)
    details = problem(response, 422)
    pointers = [e["pointer"] for e in details["errors"]]
    assert any(p.startswith(pointer) for p in pointers), pointers


async def test_a_workflow_schedule_is_checked_as_the_api_checks_a_workflow(
    client: httpx.AsyncClient,
) -> None:
    bad = {"name": "flow", "interval_seconds": 60,
           "workflow": {"chain": [{"task": "demo.echo", "args": {"payload": 1}},
                                  {"task": "no.such"}]}}  # fmt: skip
    details = problem(await client.post("/v1/schedules", json=bad), 422)
    assert any(e["pointer"].startswith("#/workflow/") for e in details["errors"])


async def test_names_are_unique_per_tenant_and_tenants_are_isolated(api: InProcessApi) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        mine = await _create(team_a, PING)
        problem(await team_a.post("/v1/schedules", json=PING), 409)
        theirs = await _create(team_b, PING)  # the same name, another tenant: fine
        for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/pause"),
                             ("POST", "/resume"), ("POST", "/trigger")]:  # fmt: skip
            kwargs: dict[str, Any] = {"json": {"paused": True}} if method == "PATCH" else {}
            response = await team_b.request(method, f"/v1/schedules/{mine['id']}{path}",
                                            **kwargs)  # fmt: skip
            assert response.status_code == 404, (method, path, response.text)
        assert [s["id"] for s in (await team_b.get("/v1/schedules")).json()["items"]] == [
            theirs["id"]
        ]
        problem(await team_b.get("/v1/schedules", params={"tenant": "team-a"}), 403)
    async with api.client(ADMIN_KEY) as admin:
        every = (await admin.get("/v1/schedules")).json()["items"]
        assert {s["id"] for s in every} == {mine["id"], theirs["id"]}
        one = (await admin.get("/v1/schedules", params={"tenant": "team-a"})).json()["items"]
        assert [s["id"] for s in one] == [mine["id"]]


async def test_a_tenant_has_at_most_its_limit_of_schedules(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    api.state.settings.schedules.max_per_tenant = 2
    try:
        async with api.client(TEAM_A_KEY) as team_a:
            for name in ("a", "b"):
                await _create(team_a, {**PING, "name": name})
            refused = problem(await team_a.post("/v1/schedules", json={**PING, "name": "c"}), 409)
            assert refused["type"].endswith("schedule-limit")
            assert redis_client.scard("conveyor:schedules:tenant:team-a") == 2
    finally:
        api.state.settings.schedules.max_per_tenant = 100


async def test_patch_pause_resume_and_versions(client: httpx.AsyncClient) -> None:
    created = await _create(client, PING)
    path = f"/v1/schedules/{created['id']}"
    changed = (await client.patch(path, json={"interval_seconds": None,
                                              "cron": "0 3 * * *",
                                              "timezone": "America/New_York"})).json()  # fmt: skip
    assert changed["version"] == 2
    assert changed["cron"] == "0 3 * * *"
    assert changed["interval_seconds"] is None
    assert all(t.endswith(("07:00:00Z", "08:00:00Z")) for t in changed["next_runs"])
    stale = await client.patch(path, json={"args": {"payload": 2}}, headers={"If-Match": "1"})
    assert problem(stale, 412)["type"].endswith("schedule-changed")
    paused = (await client.post(f"{path}/pause")).json()
    assert paused["paused"] is True
    assert paused["next_run_at"] is None
    assert paused["next_runs"] == []
    assert (await client.post(f"{path}/pause")).json()["version"] == paused["version"]
    resumed = (await client.post(f"{path}/resume")).json()
    assert resumed["paused"] is False
    assert resumed["next_run_at"] is not None
    bad = await client.patch(path, json={"interval_seconds": 60})  # both timings set
    assert problem(bad, 422)["errors"]
    assert (await client.delete(path)).status_code == 204
    assert (await client.get(path)).status_code == 404


async def test_pausing_takes_a_schedule_off_the_due_set(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    created = await _create(client, PING)
    assert redis_client.zscore("conveyor:schedules:due", created["id"]) is not None
    await client.post(f"/v1/schedules/{created['id']}/pause")
    assert redis_client.zscore("conveyor:schedules:due", created["id"]) is None
    await client.delete(f"/v1/schedules/{created['id']}")
    assert redis_client.keys("conveyor:schedule*") == [] or set(
        redis_client.keys("conveyor:schedule*")
    ) <= {"conveyor:schedules:names"}
    assert redis_client.hlen("conveyor:schedules:names") == 0


async def test_trigger_starts_a_run_the_tenant_can_read(api: InProcessApi) -> None:
    async with api.client(TEAM_A_KEY) as team_a:
        created = await _create(team_a, PING)
        response = await team_a.post(f"/v1/schedules/{created['id']}/trigger")
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        job = (await team_a.get(f"/v1/jobs/{job_id}")).json()
        assert job["tenant"] == "team-a"
        assert job["task"] == "demo.echo"
        assert job["idempotency_key"].startswith(f"schedule:{created['id']}:manual-")
        after = (await team_a.get(f"/v1/schedules/{created['id']}")).json()
        assert after["last_run_id"] == job_id
        assert after["last_outcome"] == "triggered"


class _Beat:
    """ConveyorScheduler's tick logic on the test's database, without Celery around it."""

    def __init__(self, settings: Settings) -> None:
        from conveyor.beat.app import create_beat
        from tests.fast.harness import CATALOG

        _app, services = create_beat(settings, CATALOG)
        self.scheduler = ConveyorScheduler.__new__(ConveyorScheduler)
        self.scheduler.store = services.store
        self.scheduler.catalog = services.catalog
        self.scheduler.settings = services.settings
        self.scheduler.metrics = services.metrics
        self.scheduler.schedules = services.schedules
        self.scheduler.file_schedules = services.file_schedules

    def run_due(self) -> None:
        self.scheduler._run_due_schedules()


def _make_due(
    redis_client: "redis.Redis", schedule_id: str, seconds_ago: float, interval: float = 60
) -> None:
    """Put a schedule's next tick `seconds_ago` in the past (Redis' clock), its anchor one
    `interval` before.
    """
    now_s, micros = redis_client.time()
    tick = int((now_s + micros / 1e6 - seconds_ago) * 1000)
    key = f"conveyor:schedule:{schedule_id}"
    redis_client.hset(
        key, mapping={"next_tick": tick, "next_due": tick, "anchor": tick - int(interval * 1000)}
    )
    redis_client.zadd("conveyor:schedules:due", {schedule_id: tick})


async def test_beat_runs_a_due_tick_once_and_moves_on(
    client: httpx.AsyncClient, settings: Settings, redis_client: "redis.Redis"
) -> None:
    created = await _create(client, PING)
    _make_due(redis_client, created["id"], 1)
    beat = _Beat(settings)
    beat.run_due()
    after = (await client.get(f"/v1/schedules/{created['id']}")).json()
    assert after["last_outcome"] == "ran"
    job = (await client.get(f"/v1/jobs/{after['last_run_id']}")).json()
    tick_ms = int(redis_client.hget(f"conveyor:schedule:{created['id']}", "last_tick"))
    assert job["idempotency_key"] == f"schedule:{created['id']}:{tick_ms}"
    assert _epoch(after["next_run_at"]) > datetime.now(UTC).timestamp() - 1
    beat.run_due()  # nothing is due any more
    assert redis_client.zcard("conveyor:index:task:demo.echo") == 1
    # A failed-over beat re-running the same tick (its advance was lost) adds nothing.
    key = f"conveyor:schedule:{created['id']}"
    redis_client.hset(key, mapping={"next_tick": tick_ms, "next_due": tick_ms})
    redis_client.zadd("conveyor:schedules:due", {created["id"]: tick_ms})
    beat.run_due()
    assert redis_client.zcard("conveyor:index:task:demo.echo") == 1


async def test_overlap_skip_waits_for_the_previous_run(
    client: httpx.AsyncClient, settings: Settings, redis_client: "redis.Redis"
) -> None:
    created = await _create(client, {**PING, "overlap": "skip"})
    beat = _Beat(settings)
    _make_due(redis_client, created["id"], 1)
    beat.run_due()
    first = (await client.get(f"/v1/schedules/{created['id']}")).json()["last_run_id"]
    _make_due(redis_client, created["id"], 0.5)
    beat.run_due()
    after = (await client.get(f"/v1/schedules/{created['id']}")).json()
    assert after["last_outcome"] == "skipped_overlap"
    assert after["last_run_id"] == first
    assert redis_client.zcard("conveyor:index:task:demo.echo") == 1
    await client.post(f"/v1/jobs/{first}/cancel")  # the previous run ends
    _make_due(redis_client, created["id"], 0.2)
    beat.run_due()
    after = (await client.get(f"/v1/schedules/{created['id']}")).json()
    assert after["last_outcome"] == "ran"
    assert after["last_run_id"] != first


async def test_catch_up_skip_drops_a_tick_missed_while_beat_was_down(
    client: httpx.AsyncClient, settings: Settings, redis_client: "redis.Redis"
) -> None:
    hourly = {**PING, "interval_seconds": 3600}
    skip = await _create(client, {**hourly, "name": "skip", "catch_up": "skip"})
    once = await _create(client, {**hourly, "name": "once", "catch_up": "run_once"})
    for created in (skip, once):
        # Beat was down for the ten minutes since the tick (grace: 60 s).
        _make_due(redis_client, created["id"], 600, interval=3600)
    _Beat(settings).run_due()
    skipped = (await client.get(f"/v1/schedules/{skip['id']}")).json()
    ran = (await client.get(f"/v1/schedules/{once['id']}")).json()
    assert skipped["last_outcome"] == "missed"
    assert skipped["last_run_id"] is None
    assert ran["last_outcome"] == "ran"
    assert redis_client.zcard("conveyor:index:task:demo.echo") == 1  # run_once: one run
    for after in (skipped, ran):
        assert _epoch(after["next_run_at"]) > datetime.now(UTC).timestamp() - 1


async def test_an_edit_made_while_a_tick_runs_is_kept(
    client: httpx.AsyncClient, settings: Settings, redis_client: "redis.Redis"
) -> None:
    created = await _create(client, PING)
    _make_due(redis_client, created["id"], 1)
    beat = _Beat(settings)
    stored = beat.scheduler.schedules.get(created["id"])
    assert stored is not None
    # The edit lands between beat's read and its advance: the advance is refused.
    await client.patch(f"/v1/schedules/{created['id']}", json={"interval_seconds": 3600})
    assert not beat.scheduler.schedules.advance(stored, 1, 1, 1, "ran", None, "job")
    after = (await client.get(f"/v1/schedules/{created['id']}")).json()
    assert after["interval_seconds"] == 3600
    assert _epoch(after["next_run_at"]) > datetime.now(UTC).timestamp() + 3000


# Found by the adversarial review (each failed before its fix).


async def test_a_tenant_cannot_claim_a_schedules_run_key(api: InProcessApi) -> None:
    async with api.client(TEAM_A_KEY) as team_a:
        created = await _create(team_a, PING)
        key = f"schedule:{created['id']}:{int(_epoch(created['next_run_at']) * 1000)}"
        forged = await team_a.post("/v1/jobs", json=PING_JOB, headers={"Idempotency-Key": key})
        assert problem(forged, 422)["errors"][0]["pointer"] == "#/idempotency_key"
        flow = {"chain": [PING_JOB], "idempotency_key": key}
        problem(await team_a.post("/v1/workflows", json=flow), 422)
        jobs = {"jobs": [{**PING_JOB, "idempotency_key": key}]}
        batch = await team_a.post("/v1/jobs/batch", json=jobs)
        assert batch.json()["items"][0]["status"] == 422


def test_a_fixed_time_cron_runs_once_on_the_night_the_clocks_go_back() -> None:
    for cron, zone, night in [("30 2 * * *", "Europe/Paris", (2026, 10, 25)),
                              ("59 1 * * *", "America/New_York", (2026, 11, 1))]:  # fmt: skip
        timing = Timing(cron, zone, None)
        start = datetime(*night, 0, 0, tzinfo=UTC).timestamp() - 86400
        ticks = timing.upcoming(start, 0, 3)
        days = [datetime.fromtimestamp(t, UTC).date() for t in ticks]
        assert len(set(days)) == 3, (cron, [datetime.fromtimestamp(t, UTC) for t in ticks])
        # latest_at_or_before agrees with the ticks next_after walks through.
        for tick in ticks:
            assert timing.latest_at_or_before(tick + 3 * 3600, 0) in (tick, *ticks)
    hourly = Timing("0 * * * *", "Europe/Paris", None)  # every real hour still runs
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC).timestamp()
    assert len(hourly.upcoming(start, 0, 5)) == 5
    gaps = {b - a for a, b in itertools.pairwise(hourly.upcoming(start, 0, 5))}
    assert gaps == {3600.0}


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"timezone": "Europe", "cron": "0 3 * * *", "interval_seconds": None}, "#/timezone"),
        ({"cron": "0 0 30 2 *", "interval_seconds": None}, "#/cron"),
        ({"cron": "0 0 31 4,6,9,11 *", "interval_seconds": None}, "#/cron"),
        ({"interval_seconds": 60, "jitter_seconds": 60}, "#"),
        ({"cron": "*/5 * * * *", "interval_seconds": None, "jitter_seconds": 600}, "#"),
    ],
)
async def test_schedules_that_never_run_or_jitter_past_their_ticks_are_refused(
    client: httpx.AsyncClient, fields: dict[str, Any], pointer: str
) -> None:
    details = problem(await client.post("/v1/schedules", json={**PING, **fields}), 422)
    assert any(e["pointer"].startswith(pointer) for e in details["errors"]), details


async def test_an_edit_keeps_a_pending_run(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    created = await _create(client, {**PING, "interval_seconds": 3600, "jitter_seconds": 1800})
    key = f"conveyor:schedule:{created['id']}"
    before = redis_client.hmget(key, "next_tick", "next_due")
    await client.patch(f"/v1/schedules/{created['id']}", json={"args": {"payload": 2}})
    await client.patch(f"/v1/schedules/{created['id']}", json={})
    assert redis_client.hmget(key, "next_tick", "next_due") == before


def test_a_broken_file_entry_never_stops_the_others(settings: Settings) -> None:
    from conveyor.beat.schedule import FileSchedule

    beat = _Beat(settings)
    good = FileSchedule(name="good", task="demo.echo", args={"payload": 1}, interval_seconds=60)
    never = {"name": "broken", "cron": "0 0 30 2 *", "interval_seconds": None}
    broken = FileSchedule.model_construct(**{**good.model_dump(), **never})
    beat.scheduler.file_schedules = [broken, good]
    beat.scheduler._sync_file_schedules()
    assert beat.scheduler.schedules.get("file.good") is not None


async def test_a_tenant_cannot_squat_a_file_schedules_name(
    api: InProcessApi, settings: Settings
) -> None:
    from conveyor.beat.schedule import FileSchedule

    async with api.client(TEAM_A_KEY) as team_a:
        await _create(team_a, {**PING, "name": "nightly"})
    beat = _Beat(settings)
    beat.scheduler.file_schedules = [FileSchedule(name="nightly", task="demo.echo",
                                                  args={"payload": 1}, interval_seconds=60,
                                                  tenant="team-a")]  # fmt: skip
    beat.scheduler._sync_file_schedules()
    assert beat.scheduler.schedules.get("file.nightly") is not None
