"""Authentication, tenant isolation, rate limits, backpressure and hostile input, against the
API in process (formerly in tests/test_security.py, against real API processes). Two apps on
one database stand for two API processes: everything they share lives in Redis."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis

from conveyor.core.settings import Settings
from tests.fast.harness import KEYS, InProcessApi, InProcessWorker, problem, serve, settings_for
from tests.support.auth import TEAM_A_KEY, TEAM_A_READER_KEY, TEAM_B_KEY, TEST_KEYS, keys_document

ECHO = {"task": "demo.echo", "args": {"payload": 1}}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer cvk_not-a-real-key-000000000000000000000000000"},
        {"Authorization": "Basic eDp5"},
    ],
    ids=["no key", "unknown key", "wrong scheme"],
)
async def test_requests_without_a_valid_key_are_401(
    api: InProcessApi, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with api.client(key=None) as client:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/tasks")):
            response = await client.request(method, path, headers=headers, json=ECHO)
            body = problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "cvk_not-a-real-key" not in response.text
            assert body["type"] == "urn:conveyor:problem:unauthorized"
    assert "cvk_not-a-real-key" not in caplog.text


async def test_the_x_api_key_header_works_too(api: InProcessApi) -> None:
    async with api.client(key=None) as client:
        response = await client.post("/v1/jobs", json=ECHO, headers={"X-API-Key": TEAM_A_KEY})
    assert response.status_code == 202
    assert response.json()["tenant"] == "team-a"


async def test_scopes_are_enforced(api: InProcessApi) -> None:
    async with api.client(TEAM_A_READER_KEY) as reader, api.client(TEAM_A_KEY) as writer:
        refused = problem(await reader.post("/v1/jobs", json=ECHO), 403)
        assert refused["detail"].endswith("jobs:write scope.")
        assert (await reader.get("/v1/jobs")).status_code == 200
        for method, path in (("GET", "/v1/dead-letters"), ("POST", "/v1/dead-letters/replay")):
            problem(await writer.request(method, path), 403)
            problem(await reader.request(method, path), 403)
        problem(await writer.request("DELETE", "/v1/dead-letters"), 403)


async def test_tenants_cannot_see_each_others_jobs(api: InProcessApi) -> None:
    async with (
        api.client(TEAM_A_KEY) as team_a,
        api.client(TEAM_B_KEY) as team_b,
        api.client() as admin,
    ):
        job = (await team_a.post("/v1/jobs", json=ECHO)).json()
        other = (await team_b.post("/v1/jobs", json=ECHO)).json()
        assert (job["tenant"], other["tenant"]) == ("team-a", "team-b")

        # Another tenant's job is indistinguishable from one that does not exist.
        missing = problem(await team_b.get("/v1/jobs/00000000-0000-4000-8000-000000000000"), 404)
        foreign = problem(await team_b.get(f"/v1/jobs/{job['id']}"), 404)
        assert foreign["title"] == missing["title"]
        problem(await team_b.post(f"/v1/jobs/{job['id']}/cancel"), 404)
        assert (await team_a.get(f"/v1/jobs/{job['id']}")).json()["state"] == "queued"

        async def listed(client: httpx.AsyncClient) -> set[str]:
            page = (await client.get("/v1/jobs", params={"limit": 500})).json()
            return {j["id"] for j in page["items"]}

        listed_b, listed_a = await listed(team_b), await listed(team_a)
        assert other["id"] in listed_b
        assert job["id"] not in listed_b
        assert job["id"] in listed_a
        assert other["id"] not in listed_a
        problem(await team_b.get("/v1/jobs", params={"tenant": "team-a"}), 403)

        # An admin reads every tenant's jobs, or one tenant's.
        assert (await admin.get(f"/v1/jobs/{job['id']}")).status_code == 200
        only_a = (await admin.get("/v1/jobs", params={"tenant": "team-a", "limit": 500})).json()
        assert {j["tenant"] for j in only_a["items"]} == {"team-a"}


async def test_idempotency_keys_are_per_tenant(api: InProcessApi) -> None:
    headers = {"Idempotency-Key": "shared-key-1"}
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        first = await team_a.post("/v1/jobs", json=ECHO, headers=headers)
        second = await team_b.post(
            "/v1/jobs", json={**ECHO, "args": {"payload": 2}}, headers=headers
        )
        assert (first.status_code, second.status_code) == (202, 202)
        assert first.json()["id"] != second.json()["id"]
        again = await team_a.post("/v1/jobs", json=ECHO, headers=headers)
        assert again.json()["id"] == first.json()["id"]


async def test_oversized_bodies_are_413_declared_or_streamed(redis_url: str) -> None:
    big = {"task": "demo.echo", "args": {"payload": "x" * 5000}}
    small = settings_for(redis_url, limits={"max_body_bytes": 4096})
    async with serve(small) as api, api.client() as client:
        problem(await client.post("/v1/jobs", json=big), 413)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
            yield json.dumps(big).encode()

        streamed = await client.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in streamed.request.headers
        problem(streamed, 413)


async def test_oversized_headers_are_431(client: httpx.AsyncClient) -> None:
    problem(await client.get("/v1/jobs", headers={"X-Padding": "a" * 20_000}), 431)


@pytest.mark.parametrize(
    ("args", "pointer"),
    [
        ({"payload": {"a": {"b": {"c": 1}}}}, None),
        ({"payload": json.loads("[" * 40 + "]" * 40)}, "#/args/payload" + "/0" * 31),
        ({"payload": {"text": "y" * 70_000}}, "#/args/payload/text"),
        ({"payload": {"k" * 70_000: 1}}, "#/args/payload"),
    ],
    ids=["fine", "too deep", "long string", "long key"],
)
async def test_argument_shape_limits(
    client: httpx.AsyncClient, args: dict[str, object], pointer: str | None
) -> None:
    response = await client.post("/v1/jobs", json={"task": "demo.echo", "args": args})
    if pointer is None:
        assert response.status_code == 202
        return
    assert problem(response, 422)["errors"][0]["pointer"] == pointer


async def test_hostile_bodies_get_clear_4xx(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    as_json = {"content-type": "application/json"}
    nested = b'{"task": "demo.echo", "args": {"payload": ' + b"[" * 200_000 + b"]" * 200_000 + b"}}"
    problem(await client.post("/v1/jobs", content=nested, headers=as_json), 400)
    problem(await client.post("/v1/jobs", content=b"\xff\xfe", headers=as_json), 422)
    problem(await client.post("/v1/jobs", content=b"{nope", headers=as_json), 422)
    form = {"content-type": "application/x-www-form-urlencoded"}
    problem(await client.post("/v1/jobs", content=b"task=demo.echo", headers=form), 415)
    problem(await client.post("/v1/jobs", json={**ECHO, "delay_seconds": 10**9}), 422)
    problem(await client.get("/v1/jobs", params={"limit": 100_000}), 422)
    problem(await client.get("/v1/jobs", params={"cursor": "%%%"}), 422)
    problem(await client.get("/v1/jobs", params={"cursor": "bm90LWEtY3Vyc29y"}), 422)
    problem(await client.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"), 404)
    problem(await client.get("/v1/jobs/" + "a" * 5000), 404)
    problem(await client.post("/v1/jobs", json={"task": "no.such.task"}), 422)
    problem(await client.put("/v1/jobs"), 405)
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),  # the app's own route and an included router's
        ("DELETE", "/v1/jobs/batch", "POST"),  # its own template (not /v1/jobs/{job_id})
        ("POST", "/v1/jobs/0b6c9f9e-8c7d-4c45-9d0e-1234567890ab", "GET"),
        ("PATCH", "/v1/schedules", "GET, POST"),
    ],
    ids=["jobs", "batch", "job", "schedules"],
)
async def test_a_405_names_the_methods_the_path_allows(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    """RFC 9110: a 405 carries `Allow`. FastAPI 0.165 keeps an included router whole, so the
    routes to look at are inside it (the header was empty for every included route)."""
    response = await client.request(
        method, path, content=b"{}", headers={"content-type": "application/json"}
    )
    problem(response, 405)
    assert response.headers["allow"] == allowed


async def test_rate_limit_is_shared_by_api_processes(redis_url: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    # team-a: a bucket of 5 refilled at one token per 20 s; team-b: the deployment's default.
    keys_file.write_text(
        keys_document(TEST_KEYS, tenants={"team-a": {"rate_per_second": 0.05, "burst": 5}})
    )
    settings = settings_for(
        redis_url, auth={"keys_file": keys_file}, limits={"rate_per_second": 100}
    )
    async with (
        serve(settings, "http://api-1.test") as first,
        serve(settings, "http://api-2.test") as second,
        first.client(TEAM_A_KEY) as a1,
        second.client(TEAM_A_KEY) as a2,
        second.client(TEAM_B_KEY) as b,
    ):
        responses = [await (a1 if i % 2 else a2).post("/v1/jobs", json=ECHO) for i in range(10)]
        statuses = [r.status_code for r in responses]
        assert statuses.count(202) == 5, statuses
        limited = [r for r in responses if r.status_code == 429]
        assert {r.url.host for r in limited} == {"api-1.test", "api-2.test"}
        for response in limited:
            body = problem(response, 429)
            assert body["type"] == "urn:conveyor:problem:rate-limited"
            assert 1 <= int(response.headers["retry-after"]) <= 20
            assert response.headers["ratelimit-limit"] == "5"
            assert response.headers["ratelimit-remaining"] == "0"
        accepted = [r for r in responses if r.status_code == 202]
        assert [r.headers["ratelimit-remaining"] for r in accepted] == ["4", "3", "2", "1", "0"]
        # Reads and invalid submissions draw from the same bucket; another tenant is not
        # affected.
        problem(await a1.get("/v1/jobs"), 429)
        invalid = {"task": "demo.sleep", "args": {"seconds": -1}}
        problem(await a2.post("/v1/jobs", json=invalid), 429)
        assert (await b.post("/v1/jobs", json=ECHO)).status_code == 202
        assert (await b.get("/v1/jobs")).status_code == 200


async def test_full_queues_push_back(redis_url: str, redis_client: "redis.Redis") -> None:
    settings = settings_for(
        redis_url,
        limits={
            "max_queue_depth": {"low": 3},
            "max_delayed_jobs": 2,
            "backpressure_retry_after_seconds": 7,
        },
    )
    low = {**ECHO, "priority": "low"}
    async with (
        serve(settings, "http://api-1.test") as first,
        serve(settings, "http://api-2.test") as second,
        first.client() as c1,
        second.client() as c2,
    ):
        keyed = await c1.post("/v1/jobs", json=low, headers={"Idempotency-Key": "k1"})
        assert keyed.status_code == 202
        assert (await c2.post("/v1/jobs", json=low)).status_code == 202
        assert (await c1.post("/v1/jobs", json=low)).status_code == 202
        for client in (c1, c2):
            response = await client.post("/v1/jobs", json=low)
            body = problem(response, 503)
            assert body["type"] == "urn:conveyor:problem:queue-full"
            assert not any(c.isdigit() for c in body["detail"]), "the depth is not revealed"
            assert response.headers["retry-after"] == "7"
        assert redis_client.llen(KEYS.queue("low")) == 3
        # A replay of an accepted request still finds its job; other queues still accept.
        replay = await c2.post("/v1/jobs", json=low, headers={"Idempotency-Key": "k1"})
        assert (replay.status_code, replay.json()["id"]) == (200, keyed.json()["id"])
        assert (await c2.post("/v1/jobs", json=ECHO)).status_code == 202
        delayed = {**ECHO, "delay_seconds": 3600}
        statuses = [(await c1.post("/v1/jobs", json=delayed)).status_code for _ in range(3)]
        assert statuses == [202, 202, 503]


async def test_job_errors_are_sanitized(client: httpx.AsyncClient, worker: InProcessWorker) -> None:
    leak = (
        "cannot reach redis://worker:hunter2@10.0.0.5:6379/0 with password=opensesame "
        "signed with test-signing-secret in /srv/app/.venv/lib/python3.11/site-packages/lib/db.py "
        "using Bearer cvk_team-a-writer-00000000000000000000000000000"
    )
    job = (
        await client.post("/v1/jobs", json={"task": "tests.leak", "args": {"message": leak}})
    ).json()
    worker.run_next("high")
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["state"] == "failed"
    message = done["error"]["message"]
    for secret in ("hunter2", "opensesame", "test-signing-secret", "/srv/app", "cvk_team-a"):
        assert secret not in message, message
    assert "redis://***@10.0.0.5" in message
    assert ".../db.py" in message


def _streams(redis_url: str, **api: float) -> Settings:
    """Event streams end after a moment: ASGITransport hands back a response only once the
    app has sent all of it."""
    return settings_for(redis_url, api={"events_max_seconds": 0.2, **api})


async def test_event_streams_follow_the_tenant_rules(redis_url: str) -> None:
    async with (
        serve(_streams(redis_url)) as api,
        api.client(TEAM_A_KEY) as team_a,
        api.client(TEAM_B_KEY) as team_b,
        api.client(key=None) as anonymous,
    ):
        job = (await team_a.post("/v1/jobs", json=ECHO)).json()
        problem(await team_b.get(f"/v1/jobs/{job['id']}/events"), 404)
        problem(await anonymous.get(f"/v1/jobs/{job['id']}/events"), 401)
        stream = await team_a.get(f"/v1/jobs/{job['id']}/events")
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    lines = iter(stream.text.splitlines())
    assert next(lines) == "event: job"
    assert json.loads(next(lines).removeprefix("data: "))["id"] == job["id"]


async def test_event_streams_are_capped_per_process(redis_url: str) -> None:
    async with serve(_streams(redis_url, max_event_streams=1)) as api, api.client() as client:
        job = (await client.post("/v1/jobs", json=ECHO)).json()
        first = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}/events"))
        while api.state.open_streams.total < 1:  # the first stream is being served
            assert not first.done(), first.result().text
            await asyncio.sleep(0.005)
        second = await client.get(f"/v1/jobs/{job['id']}/events")
        assert problem(second, 503)["type"] == "urn:conveyor:problem:streams-exhausted"
        assert second.headers["retry-after"]
        opened = await first
    assert opened.status_code == 200
    assert opened.text.startswith("event: job")
