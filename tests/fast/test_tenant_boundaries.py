"""What a tenant's key can still reach (issue 18, the security review's second round): listing
cursors, the cost of another tenant's 404, unknown and unrepresentable arguments, the rate
limit on every failure, event-stream caps per tenant, and listings that return summaries."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import redis

from conveyor.jobstore import _calls
from tests.fast.harness import InProcessApi, problem, serve, settings_for
from tests.support.auth import ADMIN_KEY, TEAM_A_KEY, TEAM_B_KEY

ECHO = {"task": "demo.echo", "args": {"payload": 1}}


async def _submit(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _cursor_job_id(cursor: str) -> str:
    return _calls.decode_cursor(cursor)[1]


async def test_a_listing_cursor_never_points_at_another_tenants_job(api: InProcessApi) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        queued = [await _submit(team_a, ECHO)]
        await asyncio.sleep(0.002)  # a millisecond of its own: listings order ties by id
        queued.append(await _submit(team_a, ECHO))
        theirs = [await _submit(team_b, ECHO) for _ in range(30)]
        # Many more team-a jobs in another state: the global `queued` index is now the
        # smaller one to scan, and a page that runs out of budget among team-b's rows
        # used to hand team-a a cursor naming one of them.
        cancelled = [await _submit(team_a, ECHO) for _ in range(40)]
        for job_id in cancelled:
            assert (await team_a.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200

        seen: list[str] = []
        cursors: list[str] = []
        cursor = None
        while True:
            params = {"state": "queued", "limit": 1, **_c(cursor)}
            page = (await team_a.get("/v1/jobs", params=params)).json()
            seen += [job["id"] for job in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            cursors.append(_cursor_job_id(cursor))
            assert len(cursors) < 50, "pagination does not terminate"
    assert seen == queued[::-1]
    assert cursors, "no page ran out of budget: the test did not test anything"
    assert not set(cursors) - set(queued + cancelled), "a cursor names another tenant's job"
    assert not set(cursors) & set(theirs)


def _c(cursor: str | None) -> dict[str, str]:
    return {"cursor": cursor} if cursor else {}


async def test_another_tenants_job_costs_what_an_unknown_id_costs(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    async with api.client(TEAM_A_KEY) as team_a, api.client(TEAM_B_KEY) as team_b:
        big = {"task": "demo.echo", "args": {"payload": ["x" * 60_000] * 4}}
        foreign = await _submit(team_b, big)
        redis_client.config_resetstat()
        problem(await team_a.get(f"/v1/jobs/{foreign}"), 404)
        unknown = problem(await team_a.get("/v1/jobs/00000000-0000-4000-8000-000000000000"), 404)
        # Neither read sent a record back: the tenant is checked inside Redis.
        stats = redis_client.info("commandstats")
        assert "cmdstat_hgetall" not in stats, stats
        assert unknown["title"] == "Job not found"
        # The same job read by its own tenant does fetch it (the check above can fail).
        assert (await team_b.get(f"/v1/jobs/{foreign}")).status_code == 200
        assert redis_client.info("commandstats")["cmdstat_hgetall"]["calls"] == 1


async def test_an_unknown_argument_is_a_422_naming_it(api: InProcessApi) -> None:
    async with api.client() as client:
        response = await client.post(
            "/v1/jobs", json={"task": "demo.echo", "args": {"message": "x"}}
        )
        body = problem(response, 422)
        assert [e["pointer"] for e in body["errors"]] == ["#/args/message"]
        # Two bodies that differ only in an unknown field are not one idempotent request.
        key = {"idempotency_key": "differs-in-an-unknown-field"}
        assert (await client.post("/v1/jobs", json={**ECHO, **key})).status_code == 202
        again = {"task": "demo.echo", "args": {"payload": 1, "paylaod": 2}, **key}
        assert (await client.post("/v1/jobs", json=again)).status_code == 422


async def test_a_tenant_cannot_claim_the_platforms_callback_keys(api: InProcessApi) -> None:
    # Found by review: `callback:<own job id>` as an idempotency key suppressed that job's
    # completion callback (enqueued once under that very key).
    async with api.client(TEAM_A_KEY) as client:
        body = {**ECHO, "idempotency_key": "callback:00000000-0000-4000-8000-000000000000"}
        refused = problem(await client.post("/v1/jobs", json=body), 422)
        assert [e["pointer"] for e in refused["errors"]] == ["#/idempotency_key"]
        header = {"Idempotency-Key": "callback:x"}
        problem(await client.post("/v1/jobs", json=ECHO, headers=header), 422)
        batch = await client.post("/v1/jobs/batch", json={"jobs": [body]})
        assert batch.json()["items"][0]["status"] == 422


async def test_unrepresentable_numbers_are_a_422_not_a_500(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    bodies = {
        "#/args/payload": b'{"task": "demo.echo", "args": {"payload": 18446744073709551616}}',
        "#/args/payload/deep/0": b'{"task": "demo.echo", "args": {"payload": {"deep": [1e400]}}}',
        "#/args/payload/1": b'{"task": "demo.echo", "args": {"payload": [1, -%d]}}' % (2**63 + 1),
    }
    async with api.client() as client:
        for pointer, content in bodies.items():
            response = await client.post(
                "/v1/jobs", content=content, headers={"content-type": "application/json"}
            )
            body = problem(response, 422)
            assert [e["pointer"] for e in body["errors"]] == [pointer], body
        # The largest integers that round-trip are accepted, exactly.
        edge = b'{"task": "demo.echo", "args": {"payload": [%d, -%d]}}' % (2**64 - 1, 2**63)
        accepted = await client.post(
            "/v1/jobs", content=edge, headers={"content-type": "application/json"}
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["args"]["payload"] == [2**64 - 1, -(2**63)]


async def test_every_authenticated_failure_takes_a_token(redis_url: str) -> None:
    settings = settings_for(redis_url, limits={"rate_per_second": 0.01, "burst": 4})
    big = b'{"task": "demo.echo", "args": {"payload": 18446744073709551616}}'
    async with serve(settings) as api, api.client(TEAM_A_KEY) as client:
        failures = [
            await client.post(
                "/v1/jobs", content=big, headers={"content-type": "application/json"}
            ),
            await client.post("/v1/jobs", json={"task": "demo.echo", "args": {"nope": 1}}),
            await client.post("/v1/jobs", json={**ECHO, "callback_url": "http://10.0.0.1/"}),
            await client.post("/v1/dead-letters/replay"),  # 403: not an admin
        ]
        assert [r.status_code for r in failures] == [422, 422, 422, 403]
        limited = await client.post("/v1/jobs", json=ECHO)
        assert problem(limited, 429)["type"] == "urn:conveyor:problem:rate-limited"


async def test_failures_before_any_route_take_a_token_too(redis_url: str) -> None:
    # Found by review: a body that fails to parse, an unknown route, a wrong method and the
    # body gate's own refusals cost nothing, though the API had read and parsed the body.
    settings = settings_for(
        redis_url, limits={"rate_per_second": 0.01, "burst": 5, "max_body_bytes": 4096}
    )
    json_type = {"content-type": "application/json"}
    async with serve(settings) as api, api.client(TEAM_A_KEY) as client:
        failures = [
            await client.post("/v1/jobs", content=b"[1," * 500 + b"x", headers=json_type),
            await client.post("/v1/jobs", content=b"\x0e\xff", headers=json_type),
            await client.get("/v1/no-such-route"),
            await client.patch("/v1/jobs", json=ECHO),
            await client.post("/v1/jobs", content=b"x" * 5000, headers=json_type),
        ]
        assert [r.status_code for r in failures] == [422, 400, 404, 405, 413]
        limited = await client.get("/v1/jobs")
        assert problem(limited, 429)["type"] == "urn:conveyor:problem:rate-limited"


async def test_a_body_on_any_method_is_held_to_the_gate(redis_url: str) -> None:
    # Found by review: a GET or DELETE with a declared body bypassed the gate, so a trickled
    # body held the connection for as long as the client liked.
    settings = settings_for(redis_url, limits={"body_timeout_seconds": 0.3})

    async def trickle() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await asyncio.sleep(0.05)

    async with serve(settings) as api, api.client(key=None) as anonymous, api.client() as client:
        slow = await client.request("GET", "/v1/jobs", content=trickle())
        assert problem(slow, 408)["type"] == "urn:conveyor:problem:body-timeout"
        assert slow.headers["connection"] == "close"
        problem(await anonymous.request("DELETE", "/v1/jobs", content=b"{}"), 401)
        assert (await client.request("DELETE", "/v1/jobs", content=b"{}")).status_code == 405
        assert (await client.get("/healthz")).status_code == 200


async def test_event_streams_are_capped_per_tenant(redis_url: str) -> None:
    settings = settings_for(
        redis_url, api={"events_max_seconds": 0.5, "max_event_streams_per_tenant": 1}
    )
    async with (
        serve(settings) as api,
        api.client(TEAM_A_KEY) as team_a,
        api.client(TEAM_B_KEY) as team_b,
    ):
        mine = await _submit(team_a, ECHO)
        theirs = await _submit(team_b, ECHO)
        first = asyncio.create_task(team_a.get(f"/v1/jobs/{mine}/events"))
        while api.state.open_streams.by_tenant["team-a"] < 1:
            assert not first.done(), first.result().text
            await asyncio.sleep(0.005)
        second = await team_a.get(f"/v1/jobs/{mine}/events")
        refused = problem(second, 429)
        assert refused["type"] == "urn:conveyor:problem:tenant-streams-exhausted"
        assert second.headers["retry-after"]
        other = await team_b.get(f"/v1/jobs/{theirs}/events")  # not locked out
        assert other.status_code == 200
        assert (await first).status_code == 200
    assert api.state.open_streams.total == 0
    assert not api.state.open_streams.by_tenant


async def test_concurrent_streams_cannot_pass_the_caps_together(redis_url: str) -> None:
    # Found by review: the check ran in the dependency, the count only once the stream
    # started, so requests arriving together all passed the check.
    settings = settings_for(
        redis_url,
        api={"events_max_seconds": 1.0, "max_event_streams_per_tenant": 2, "max_event_streams": 5},
    )
    async with serve(settings) as api, api.client(TEAM_A_KEY) as team_a:
        mine = await _submit(team_a, ECHO)
        answers = await asyncio.gather(*(team_a.get(f"/v1/jobs/{mine}/events") for _ in range(20)))
        statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200] + [429] * 18
    assert api.state.open_streams.total == 0
    assert not api.state.open_streams.by_tenant


async def test_listings_return_summaries_unless_fields_ask(api: InProcessApi) -> None:
    async with api.client() as client:
        job_id = await _submit(client, {"task": "demo.echo", "args": {"payload": "x" * 5000}})
        item = (await client.get("/v1/jobs")).json()["items"][0]
        assert item["id"] == job_id
        assert "args" not in item
        assert "result" not in item
        assert (item["state"], item["task"]) == ("queued", "demo.echo")
        full = (await client.get("/v1/jobs", params={"fields": "args,result"})).json()["items"]
        assert full[0]["args"] == {"payload": "x" * 5000}
        assert "result" in full[0]
        assert full[0]["result"] is None
        only_args = (await client.get("/v1/jobs", params={"fields": "args"})).json()["items"]
        assert "result" not in only_args[0]
        problem(await client.get("/v1/jobs", params={"fields": "args,secrets"}), 422)
        spec = (await client.get("/openapi.json")).json()
        params = {p["name"] for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
        assert "fields" in params


async def test_a_listing_with_heavy_fields_stops_at_its_byte_limit(redis_url: str) -> None:
    settings = settings_for(redis_url, api={"listing_max_bytes": 2048})
    async with serve(settings) as api, api.client(ADMIN_KEY) as client:
        ids = [
            await _submit(client, {"task": "demo.echo", "args": {"payload": str(i) * 900}})
            for i in range(5)
        ]
        pages: list[list[str]] = []
        cursor = None
        while True:
            query = {"fields": "args", "limit": 50, **_c(cursor)}
            body = (await client.get("/v1/jobs", params=query)).json()
            pages.append([job["id"] for job in body["items"]])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        summaries = (await client.get("/v1/jobs", params={"limit": 50})).json()
    assert [len(page) for page in pages] == [3, 2]  # 3 x ~915 bytes reach 2048
    listed = [job_id for page in pages for job_id in page]
    assert sorted(listed) == sorted(ids)
    # In the order of one unpaged listing (newest first; two jobs accepted in the same
    # millisecond are in id order, so the submission order is not the oracle).
    assert listed == [job["id"] for job in summaries["items"]]
    assert len(summaries["items"]) == 5
    assert summaries["next_cursor"] is None


async def test_a_lone_surrogate_is_a_422_not_a_500(api: InProcessApi) -> None:
    """JSON may spell a lone UTF-16 surrogate (`"\\ud800"`), which Python's parser reads into
    a string no UTF-8 codec can write: the record's encoder failed with a 500. Each way a
    job's arguments come in answers a 422 naming the place, in a value or in a key.
    """
    echo = b'{"task": "demo.echo", "args": {"payload": {"a": ["ok", "x\\ud800y"]}}}'
    in_key = b'{"task": "demo.echo", "args": {"payload": {"\\udfff": 1}}}'
    headers = {"content-type": "application/json"}
    async with api.client() as client:
        for content, pointer in ((echo, "#/args/payload/a/1"), (in_key, "#/args/payload")):
            single = await client.post("/v1/jobs", content=content, headers=headers)
            assert [e["pointer"] for e in problem(single, 422)["errors"]] == [pointer]
            batch = await client.post(
                "/v1/jobs/batch", content=b'{"jobs": [%s]}' % content, headers=headers
            )
            assert batch.status_code == 200, batch.text
            (item,) = batch.json()["items"]
            assert item["status"] == 422
            assert [e["pointer"] for e in item["problem"]["errors"]] == ["#/jobs/0" + pointer[1:]]
        step = b'{"name": "w", "chain": [{"task": "demo.echo", "args": {"payload": "\\ud800"}}]}'
        workflow = await client.post("/v1/workflows", content=step, headers=headers)
        assert problem(workflow, 422)["errors"], workflow.text
        # A valid pair (an astral character written as two escapes) is accepted as it is.
        pair = b'{"task": "demo.echo", "args": {"payload": "\\ud83d\\ude00"}}'
        accepted = await client.post("/v1/jobs", content=pair, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["args"]["payload"] == "\U0001f600"
