"""Per-tenant quotas at accept (still one round trip): jobs waiting per tier, delayed jobs and
bytes of both. A tenant at its quota gets its own 429 naming its own numbers; another tenant
is unaffected; usage falls as its jobs are claimed, promoted or cancelled.
"""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis

from conveyor.jobstore.submission import Submission
from tests.fast.harness import (
    CATALOG,
    KEYS,
    InProcessApi,
    InProcessWorker,
    problem,
    serve,
    settings_for,
)
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY, TEST_KEYS, keys_document

QUOTAS = {"max_queued_per_tier": 2, "max_delayed": 1, "max_bytes": 20_000}


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[InProcessApi]:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(keys_document(TEST_KEYS, tenants={"team-a": QUOTAS}))
    async with serve(settings_for(redis_url, auth={"keys_file": keys_file})) as served:
        yield served


def echo(**extra: object) -> dict[str, object]:
    return {"task": "demo.echo", "args": {"payload": 1}, **extra}


async def refused(client: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    response = await client.post("/v1/jobs", json=body)
    found = problem(response, 429)
    assert found["type"] == "urn:conveyor:problem:quota-exceeded"
    assert response.headers["retry-after"]
    return found


async def test_a_tenant_at_its_queued_quota_is_refused_alone(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    async with api.client(TEAM_A_KEY) as a, api.client(TEAM_B_KEY) as b:
        for _ in range(2):
            assert (await a.post("/v1/jobs", json=echo())).status_code == 202
        detail = (await refused(a, echo()))["detail"]
        assert detail.startswith("This tenant's quota of 2 jobs waiting on the default tier")
        # Its own quota only: other tiers, other tenants, and delayed jobs go on.
        assert (await a.post("/v1/jobs", json=echo(priority="high"))).status_code == 202
        assert (await a.post("/v1/jobs", json=echo(delay_seconds=60))).status_code == 202
        for _ in range(5):
            assert (await b.post("/v1/jobs", json=echo())).status_code == 202
        # A claim frees a place.
        while worker.take("default").headers["conveyor_tenant"] != "team-a":
            pass
        assert (await a.post("/v1/jobs", json=echo())).status_code == 202
        await refused(a, echo())
    usage = redis_client.hgetall(KEYS.quota("team-a"))
    assert usage["queued:default"] == "2"
    assert usage["queued:high"] == "1"
    assert usage["delayed"] == "1"


async def test_delayed_quota_counts_until_promotion_or_cancel(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    async with api.client(TEAM_A_KEY) as a:
        first = (await a.post("/v1/jobs", json=echo(delay_seconds=600))).json()
        detail = (await refused(a, echo(delay_seconds=600)))["detail"]
        assert "quota of 1 delayed jobs" in detail
        assert (await a.post(f"/v1/jobs/{first['id']}/cancel")).status_code == 200
        second = (await a.post("/v1/jobs", json=echo(delay_seconds=600))).json()
        worker.fast_forward(second["id"])
        assert worker.promote() == 1
        assert (await a.post("/v1/jobs", json=echo(delay_seconds=600))).status_code == 202
    assert redis_client.hget(KEYS.quota("team-a"), "delayed") == "1"
    assert redis_client.hget(KEYS.quota("team-a"), "queued:default") == "1"


async def test_a_byte_quota_bounds_what_one_tenant_can_store(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    big = {"task": "demo.echo", "args": {"payload": "x" * 6_000}, "priority": "low"}
    async with api.client(TEAM_A_KEY) as a, api.client(TEAM_B_KEY) as b:
        assert (await a.post("/v1/jobs", json=big)).status_code == 202
        assert (await a.post("/v1/jobs", json={**big, "priority": "high"})).status_code == 202
        detail = (await refused(a, {**big, "priority": "default"}))["detail"]
        assert "quota of 20000 bytes" in detail
        assert "team-b" not in detail
        assert (await b.post("/v1/jobs", json=big)).status_code == 202
        worker.take("low")  # A's low job is claimed: its bytes leave A's usage
        assert (await a.post("/v1/jobs", json={**big, "priority": "default"})).status_code == 202


async def test_usage_returns_to_nothing_when_every_job_is_claimed(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    async with api.client(TEAM_A_KEY) as a:
        for priority in ("high", "default"):
            assert (await a.post("/v1/jobs", json=echo(priority=priority))).status_code == 202
        delayed = (await a.post("/v1/jobs", json=echo(delay_seconds=600))).json()
    worker.fast_forward(delayed["id"])
    worker.promote()
    worker.take("high")
    worker.take("default")
    worker.take("default")
    assert redis_client.hgetall(KEYS.quota("team-a")) == {}


def test_a_retry_counts_as_delayed_until_its_message_is_promoted(
    worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    spec = CATALOG["demo.echo"]
    job_id = worker.store.submit(spec, Submission.of(spec, tenant="t1", args={})).job_id
    message = worker.take("default")
    assert redis_client.hgetall(KEYS.quota("t1")) == {}
    worker.store.start(job_id)
    assert worker.store.retry(
        job_id, error="{}", delay=0, message=message.raw, generation=1
    ).applied
    assert redis_client.hgetall(KEYS.quota("t1")) == {
        "delayed": "1",
        "bytes": str(len(message.raw)),
    }
    assert worker.promote() == 1
    assert redis_client.hgetall(KEYS.quota("t1")) == {"queued:default": "1",
                                                      "bytes": str(len(message.raw))}  # fmt: skip
    worker.take("default")
    assert redis_client.hgetall(KEYS.quota("t1")) == {}
