"""Uniqueness and debounce at submission, in the accept script (no extra round trip): a
submission whose tenant, task and unique key match a job the mode still covers is answered
with that job (200, as an idempotent replay); debounce moves a delayed job's arguments and due
time instead.
"""

import base64
import json

import httpx
import redis

from tests.fast.harness import KEYS, InProcessApi, InProcessWorker, problem
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY


def echo(payload: object, mode: str, **extra: object) -> dict[str, object]:
    unique: dict[str, object] = {"mode": mode}
    unique.update(extra.pop("unique", {}))  # type: ignore[call-overload]
    return {"task": "demo.echo", "args": {"payload": payload}, "unique": unique, **extra}


async def post(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[int, str]:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code in (200, 202), response.text
    return response.status_code, response.json()["id"]


async def test_queued_mode_answers_with_the_waiting_job_until_it_starts(
    api: InProcessApi, worker: InProcessWorker
) -> None:
    async with api.client(TEAM_A_KEY) as a, api.client(TEAM_B_KEY) as b:
        status, first = await post(a, echo(1, "queued"))
        assert status == 202
        assert await post(a, echo(1, "queued")) == (200, first)
        assert (await post(a, echo(2, "queued")))[1] != first, "other arguments, another key"
        assert (await post(b, echo(1, "queued")))[1] != first, "keys are per tenant"
        taken = worker.take("default")
        assert taken.job_id == first
        worker.store.start(first)
        assert (await post(a, echo(1, "queued")))[1] != first, "started: no longer covered"


async def test_active_mode_covers_a_running_job_until_it_finishes(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    body = echo(1, "active", unique={"key": "report-42"})
    async with api.client(TEAM_A_KEY) as a:
        _, first = await post(a, body)
        worker.run_next("default")
        assert (await a.get(f"/v1/jobs/{first}")).json()["state"] == "succeeded"
        lock = KEYS.unique("team-a", "demo.echo", "report-42")
        assert redis_client.ttl(lock) > 0, "the lock expires with its job's record"
        status, second = await post(a, {**body, "args": {"payload": 2}})
        assert status == 202
        assert second != first
        assert await post(a, body) == (200, second)


async def test_ttl_mode_holds_after_the_job_finished(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    body = echo(1, "ttl", unique={"ttl_seconds": 300})
    async with api.client(TEAM_A_KEY) as a:
        _, first = await post(a, body)
        worker.run_next("default")
        assert await post(a, body) == (200, first)
    lock = KEYS.unique("team-a", "demo.echo", redis_client.hget(KEYS.job(first), "unique_key"))
    assert 290 < redis_client.ttl(lock) <= 300


async def test_debounce_moves_the_delayed_jobs_arguments_and_due_time(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    async with api.client(TEAM_A_KEY) as a:
        status, first = await post(a, echo({"v": 1}, "debounce", delay_seconds=60))
        assert status == 202
        due_before = worker.due_at(first)
        status, again = await post(a, echo({"v": 2}, "debounce", delay_seconds=120))
        assert (status, again) == (200, first)
        job = (await a.get(f"/v1/jobs/{first}")).json()
        assert job["state"] == "scheduled"
        due_after = worker.due_at(first)
        assert due_before is not None
        assert due_after is not None
        assert due_after - due_before > 55
    assert redis_client.zcard(KEYS.delayed) == 1
    assert json.loads(redis_client.hget(KEYS.job(first), "args")) == {"payload": {"v": 2}}
    worker.fast_forward(first)
    assert worker.promote() == 1
    message = worker.take("default")
    assert message.job_id == first
    assert message.kwargs == {"payload": {"v": 2}}
    envelope = json.loads(message.raw)
    assert envelope["properties"]["correlation_id"] == first
    _args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
    assert kwargs == {"payload": {"v": 2}}
    assert redis_client.hgetall(KEYS.quota("team-a")) == {}, "usage follows the replaced message"


async def test_a_debounce_after_the_job_was_promoted_starts_a_new_one(
    api: InProcessApi, worker: InProcessWorker
) -> None:
    async with api.client(TEAM_A_KEY) as a:
        _, first = await post(a, echo(1, "debounce", delay_seconds=60))
        worker.fast_forward(first)
        worker.promote()
        status, second = await post(a, echo(2, "debounce", delay_seconds=60))
        assert status == 202
        assert second != first


async def test_invalid_uniqueness_is_a_422_with_a_pointer(client: httpx.AsyncClient) -> None:
    no_delay = problem(await client.post("/v1/jobs", json=echo(1, "debounce")), 422)
    assert no_delay["errors"][0]["pointer"] == "#/delay_seconds"
    no_ttl = problem(await client.post("/v1/jobs", json=echo(1, "ttl")), 422)
    assert no_ttl["errors"][0]["pointer"].startswith("#/unique")
    stray_ttl = echo(1, "queued", unique={"ttl_seconds": 5})
    assert (await client.post("/v1/jobs", json=stray_ttl)).status_code == 422
    bad_key = echo(1, "queued", unique={"key": "a b"})
    assert (await client.post("/v1/jobs", json=bad_key)).status_code == 422
    bad_mode = echo(1, "forever")
    assert (await client.post("/v1/jobs", json=bad_mode)).status_code == 422
