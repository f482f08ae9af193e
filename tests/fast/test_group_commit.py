"""Single submissions under way together in one API process go to Redis together
(jobstore/coalesce.py): fewer accept calls than jobs, each job answered on its own, and a
round trip that fails fails the submissions waiting with it at once.
"""

import asyncio

import httpx
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor.core.catalog import load_catalog
from conveyor.core.redis import async_client
from conveyor.jobstore.aio import AsyncJobStore
from conveyor.jobstore.results import AcceptVerdict, Limits
from conveyor.jobstore.submission import Submission
from tests.fast.harness import KEYS, serve, settings_for
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY
from tests.support.processes import free_port

SPEC = load_catalog([])["demo.echo"]


def _evalsha_calls(client: "redis.Redis") -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_submissions_under_way_together_share_accept_calls(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    before = _evalsha_calls(redis_client)
    bodies = [{"task": "demo.echo", "args": {"payload": n}} for n in range(40)]
    responses = await asyncio.gather(*(client.post("/v1/jobs", json=body) for body in bodies))
    calls = _evalsha_calls(redis_client) - before

    assert [r.status_code for r in responses] == [202] * 40
    assert len({r.json()["id"] for r in responses}) == 40
    assert [r.json()["args"]["payload"] for r in responses] == list(range(40))
    assert calls < 40, f"{calls} accept calls for 40 submissions under way together"
    assert redis_client.llen(KEYS.queue("default")) == 40


async def test_each_tenant_keeps_its_own_limits_within_a_shared_call(redis_url: str) -> None:
    settings = settings_for(redis_url, limits={"rate_per_second": 0.001, "burst": 2})
    async with (
        serve(settings) as api,
        api.client(TEAM_A_KEY) as team_a,
        api.client(TEAM_B_KEY) as team_b,
    ):
        body = {"task": "demo.echo", "args": {"payload": 1}}
        responses = await asyncio.gather(
            *(team_a.post("/v1/jobs", json=body) for _ in range(4)),
            *(team_b.post("/v1/jobs", json=body) for _ in range(2)),
        )
    statuses = [r.status_code for r in responses]
    assert sorted(statuses[:4]) == [202, 202, 429, 429]
    assert statuses[4:] == [202, 202]
    limited = [r for r in responses[:4] if r.status_code == 429]
    assert all(int(r.headers["retry-after"]) > 0 for r in limited)


async def test_a_failed_round_trip_fails_every_submission_waiting_with_it(
    redis_url: str,
) -> None:
    """Nothing listens on the port: each submission fails with the connection error of the
    round trip it waited for (the API answers 503), none hangs, and the next one is sent
    again."""
    settings = settings_for(f"redis://127.0.0.1:{free_port()}/0")
    client = async_client(settings)
    store = AsyncJobStore(client, settings)
    submission = Submission.of(SPEC, tenant="t", args={})
    try:
        for _ in range(2):
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(store.submit(SPEC, submission, Limits()) for _ in range(20)),
                    return_exceptions=True,
                ),
                timeout=10,
            )
            assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes
    finally:
        await client.aclose()


async def test_a_request_that_goes_away_leaves_its_job_accepted(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    settings = settings_for(redis_url)
    client = async_client(settings)
    store = AsyncJobStore(client, settings)
    try:
        submission = Submission.of(SPEC, tenant="t", args={})
        gone = asyncio.ensure_future(store.submit(SPEC, submission, Limits()))
        kept = asyncio.ensure_future(store.submit(SPEC, submission, Limits()))
        await asyncio.sleep(0)  # both are waiting for the round trip
        gone.cancel()
        outcome = await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await client.aclose()
    assert outcome.verdict is AcceptVerdict.CREATED
    assert redis_client.llen(KEYS.queue("default")) == 2


async def test_a_call_redis_refuses_fails_its_own_submissions_only(
    redis_url: str, redis_client: "redis.Redis"
) -> None:
    """Found by review: any failure of a round trip failed the submissions waiting for the
    next one too; only a Redis out of reach does now (they would fail the same way). A job
    whose step Redis refuses raises on its own, as a one-job submission always did."""
    settings = settings_for(redis_url)
    client = async_client(settings)
    store = AsyncJobStore(client, settings)
    redis_client.set(KEYS.index_tenant("bad"), "not a sorted set")  # the call's flush fails
    redis_client.hset(KEYS.idempotency("t", "broken"), "not", "a string")  # one job's step
    try:
        first = [
            asyncio.ensure_future(
                store.submit(SPEC, Submission.of(SPEC, tenant=t, args={}), Limits())
            )
            for t in ("bad", "t")
        ]
        while store._accepts._waiting or store._accepts._sender is None:  # in flight
            await asyncio.sleep(0)
        later = [
            asyncio.ensure_future(
                store.submit(SPEC, Submission.of(SPEC, tenant="t", args={}), Limits())
            )
            for _ in range(5)
        ]
        broken = Submission.of(SPEC, tenant="t", args={}, idempotency_key="broken")
        outcomes = await asyncio.gather(*first, *later, return_exceptions=True)
        with pytest.raises(redis.ResponseError):
            await store.submit(SPEC, broken, Limits())
    finally:
        await client.aclose()
    assert all(isinstance(o, redis.ResponseError) for o in outcomes[:2]), outcomes[:2]
    assert [getattr(o, "verdict", o) for o in outcomes[2:]] == [AcceptVerdict.CREATED] * 5


def test_calls_and_round_trips_are_bounded_by_bytes() -> None:
    """Found by review: a round trip of 256 jobs of 900 KB held Redis for seconds, past the
    API client's socket timeout, and each job was answered 503 although Redis queued it."""
    from conveyor.jobstore._calls import ACCEPT_BATCH, ACCEPT_CALL_BYTES, accept_calls
    from conveyor.jobstore.coalesce import MOST_BYTES_PER_ROUND_TRIP, AcceptQueue
    from conveyor.jobstore.submission import prepare

    settings = settings_for("redis://127.0.0.1:1/0")

    def job(size: int) -> tuple[object, bytes, Limits]:
        submission = Submission.of(SPEC, tenant="t", args={"payload": "x" * size})
        return (*prepare(SPEC, submission, settings.worker), Limits())

    small, big, huge = [job(100)] * 100, [job(100_000)] * 10, [job(2 * ACCEPT_CALL_BYTES)] * 2
    calls = accept_calls("conveyor", [*small, *big, *huge])
    assert [count for _, count in calls] == [ACCEPT_BATCH, 36, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    for argv, count in calls:
        assert (
            count == 1
            or sum(len(a) for a in argv[10:] if isinstance(a, bytes)) <= ACCEPT_CALL_BYTES
        )

    queue = AcceptQueue(None, "conveyor")  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    try:
        for prepared in [*big, *huge]:
            queue._waiting.append((prepared, loop.create_future(), len(prepared[1])))  # type: ignore[arg-type]
        sizes = []
        while queue._waiting:
            sizes.append([size for _, _, size in queue._next_round_trip()])
    finally:
        loop.close()
    assert all(sum(s) <= MOST_BYTES_PER_ROUND_TRIP or len(s) == 1 for s in sizes)
    assert sum(map(len, sizes)) == 12
    assert len(sizes) > 3
