"""POST /v1/jobs/batch in process: each submission validated, accepted and answered on its
own, in one round trip (issue 22, item 2)."""

import httpx
import pytest
import redis

from tests.fast.harness import KEYS, InProcessApi, delta, problem, samples, serve, settings_for
from tests.support.auth import TEAM_A_KEY

ECHO = {"task": "demo.echo", "args": {"payload": 1}}


async def test_each_submission_is_answered_on_its_own(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    jobs = [
        ECHO,
        {"task": "demo.sleep", "args": {"seconds": -1}},
        {**ECHO, "idempotency_key": "batch-key"},
        {"task": "no.such.task"},
        {**ECHO, "idempotency_key": "batch-key"},  # the same request again: a replay
        {**ECHO, "args": {"payload": 2}, "idempotency_key": "batch-key"},  # a conflict
        {"task": "demo.echo", "args": {"payload": 2**64}},
        {**ECHO, "callback_url": "http://10.1.2.3/hook"},
    ]
    response = await client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["items"]
    assert [i["status"] for i in items] == [202, 422, 202, 422, 200, 409, 422, 422]
    assert body["accepted"] == 2
    assert items[0]["job"]["state"] == "queued"
    assert items[0]["headers"]["Location"] == f"/v1/jobs/{items[0]['job']['id']}"
    assert items[4]["job"]["id"] == items[2]["job"]["id"]
    pointers = [[e["pointer"] for e in items[i]["problem"]["errors"]] for i in (1, 3, 6, 7)]
    assert pointers == [
        ["#/jobs/1/args/seconds"],
        ["#/jobs/3/task"],
        ["#/jobs/6/args/payload"],
        ["#/jobs/7/callback_url"],
    ]
    assert items[5]["problem"]["type"] == "urn:conveyor:problem:idempotency-conflict"
    # Exactly the two new jobs were enqueued, each once.
    assert redis_client.llen(KEYS.queue("default")) == 2
    listed = (await client.get("/v1/jobs")).json()["items"]
    assert {job["id"] for job in listed} == {items[0]["job"]["id"], items[2]["job"]["id"]}


async def test_each_job_takes_its_own_token(redis_url: str) -> None:
    settings = settings_for(redis_url, limits={"rate_per_second": 0.01, "burst": 3})
    async with serve(settings) as api, api.client(TEAM_A_KEY) as client:
        response = await client.post("/v1/jobs/batch", json={"jobs": [ECHO] * 5})
    items = response.json()["items"]
    assert [i["status"] for i in items] == [202, 202, 202, 429, 429]
    assert items[3]["problem"]["type"] == "urn:conveyor:problem:rate-limited"
    assert int(items[4]["headers"]["Retry-After"]) >= 1


async def test_a_batch_survives_redis_forgetting_the_accept_script(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    redis_client.script_flush()  # as after a Redis restart or failover
    response = await client.post("/v1/jobs/batch", json={"jobs": [ECHO, ECHO]})
    assert [i["status"] for i in response.json()["items"]] == [202, 202]
    assert redis_client.llen(KEYS.queue("default")) == 2


async def test_a_batch_has_bounds_and_needs_a_key(redis_url: str) -> None:
    settings = settings_for(redis_url, limits={"max_batch_jobs": 3})
    async with serve(settings) as api, api.client() as client, api.client(None) as anonymous:
        too_many = await client.post("/v1/jobs/batch", json={"jobs": [ECHO] * 4})
        assert [e["pointer"] for e in problem(too_many, 422)["errors"]] == ["#/jobs"]
        empty = await client.post("/v1/jobs/batch", json={"jobs": []})
        problem(empty, 422)
        problem(await anonymous.post("/v1/jobs/batch", json={"jobs": [ECHO]}), 401)
        spec = (await client.get("/openapi.json")).json()
        assert spec["paths"]["/v1/jobs/batch"]["post"]["operationId"] == "submit_jobs"


async def test_a_batch_counts_each_outcome_of_its_jobs(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    """Counted once per outcome for the whole batch, each job in its own outcome: a key
    whose job record expired is a 409 counted as a conflict (it was not counted at all)."""
    async with api.client() as client:
        first = await client.post("/v1/jobs", json={**ECHO, "idempotency_key": "gone-key"})
        assert first.status_code == 202
        redis_client.delete(KEYS.job(first.json()["id"]))  # its record expired, the key not
        before = samples(api.state.metrics.submissions, "_total")
        jobs = [
            ECHO,
            ECHO,
            {**ECHO, "idempotency_key": "count-key"},
            {**ECHO, "idempotency_key": "count-key"},  # a replay
            {**ECHO, "args": {"payload": 3}, "idempotency_key": "count-key"},  # a conflict
            {**ECHO, "idempotency_key": "gone-key"},  # its job expired
            {"task": "no.such.task"},
        ]
        response = await client.post("/v1/jobs/batch", json={"jobs": jobs})
    items = response.json()["items"]
    assert [i["status"] for i in items] == [202, 202, 202, 200, 409, 409, 422]
    assert items[5]["problem"]["type"] == "urn:conveyor:problem:expired"
    counted = delta(samples(api.state.metrics.submissions, "_total"), before)
    assert {k: v for k, v in counted.items() if v} == {
        ("accepted",): 3,
        ("duplicate",): 1,
        ("conflict",): 2,
        ("rejected",): 1,
    }


async def test_jobs_accepted_before_a_failing_answer_are_counted(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's jobs are written before they are answered: when answering one fails
    (reading a replayed key's job from a Redis gone away), those accepted are still counted."""
    async with api.client() as client:
        first = await client.post("/v1/jobs", json={**ECHO, "idempotency_key": "seen-key"})
        assert first.status_code == 202
        before = samples(api.state.metrics.submissions, "_total")

        async def unreachable(job_id: str) -> None:
            raise redis.exceptions.ConnectionError("Redis went away")

        monkeypatch.setattr(api.state.store, "get", unreachable)
        jobs = [ECHO, ECHO, {**ECHO, "idempotency_key": "seen-key"}]
        response = await client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 503
    counted = delta(samples(api.state.metrics.submissions, "_total"), before)
    assert counted[("accepted",)] == 2
