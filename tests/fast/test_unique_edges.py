"""Faults a review found in uniqueness and debounce at submission, each a test first."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.fast.harness import KEYS, InProcessApi, InProcessWorker, serve, settings_for
from tests.fast.test_unique import echo, post
from tests.support.auth import TEAM_A_KEY, TEST_KEYS, keys_document


async def test_debounce_keeps_the_record_and_the_message_in_step(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    """The debounced job runs with the later submission's message (its tier, retries, time
    limit and concurrency key) while its record keeps the first one's: GET shows one job,
    the worker runs another (retries counted from the header, flow control on the header's
    key, the tier the header names)."""
    first = {"task": "fast.keyed", "args": {"n": 1}, "concurrency_key": "a", "max_retries": 3,
             "delay_seconds": 60, "unique": {"mode": "debounce"}}  # fmt: skip
    later = {**first, "args": {"n": 2}, "concurrency_key": "b", "max_retries": 0,
             "priority": "high"}  # fmt: skip
    async with api.client(TEAM_A_KEY) as a:
        _, job_id = await post(a, first)
        assert await post(a, later) == (200, job_id)
        record = (await a.get(f"/v1/jobs/{job_id}")).json()
    worker.fast_forward(job_id)
    assert worker.promote() == 1
    message = worker.take(record["queue"])
    assert message.kwargs == {"n": 2}
    headers = message.headers
    as_run = (headers["conveyor_queue"], headers["conveyor_max_retries"],
              headers["conveyor_concurrency_key"])  # fmt: skip
    as_recorded = (record["queue"], record["max_retries"], record["concurrency_key"])
    assert as_run == as_recorded


async def test_a_retry_of_a_submission_answered_by_uniqueness_keeps_its_answer(
    api: InProcessApi, worker: InProcessWorker
) -> None:
    """A submission answered with the unique holder does not record its idempotency key, so
    the client's retry of it (after a lost response; the client always sends a key) makes a
    second job once the holder has started: one idempotency key, two different jobs."""
    async with api.client(TEAM_A_KEY) as a:
        _, holder = await post(a, echo(1, "queued", idempotency_key="first"))
        answered = echo(1, "queued", idempotency_key="second")
        assert await post(a, answered) == (200, holder)
        worker.store.start(worker.take("default").job_id)
        assert await post(a, answered) == (200, holder), "the same key, another job"


async def test_a_replayed_dead_letter_keeps_its_uniqueness_lock(
    client: httpx.AsyncClient, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    """Replay persists the record and the idempotency key, not the lock: it still expires
    with the dead letter's retention while the replayed job is queued or running again, and
    `active` stops covering it."""
    body = {"task": "demo.fail", "args": {"mode": "retryable"}, "max_retries": 0,
            "unique": {"mode": "active", "key": "nightly"}}  # fmt: skip
    _, job_id = await post(client, body)
    assert worker.run_next("default").job_id == job_id
    lock = KEYS.unique("tests", "demo.fail", "nightly")
    assert redis_client.ttl(lock) > 0
    assert (await client.post(f"/v1/dead-letters/{job_id}/replay")).status_code == 200
    assert redis_client.ttl(KEYS.job(job_id)) == -1
    assert redis_client.ttl(lock) == -1, "the lock of an active job must not expire"


@pytest.fixture
async def quota_api(tmp_path: Path, redis_url: str) -> AsyncIterator[InProcessApi]:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(keys_document(TEST_KEYS, tenants={"team-a": {"max_bytes": 4_000}}))
    async with serve(settings_for(redis_url, auth={"keys_file": keys_file})) as served:
        yield served


async def test_debounce_is_held_to_the_bytes_quota(
    quota_api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    """Debounce swaps in the later (larger) message without the bytes quota check a new job
    gets: the tenant ends over its quota, with a 200."""
    async with quota_api.client(TEAM_A_KEY) as a:
        _, first = await post(a, echo("x", "debounce", delay_seconds=60))
        big = echo("x" * 3_000, "debounce", delay_seconds=60)
        assert (
            await a.post("/v1/jobs", json={**big, "unique": {"mode": "queued"}})
        ).status_code == 429, "a new job of this size is over the quota"
        response = await a.post("/v1/jobs", json=big)
    assert int(redis_client.hget(KEYS.quota("team-a"), "bytes") or 0) <= 4_000
    assert response.status_code == 429, (response.status_code, first)


async def test_ttl_mode_does_not_answer_with_a_job_older_than_its_ttl(
    api: InProcessApi, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    """`ttl` answers with any holder whose record exists, whatever mode took the lock: a key
    taken by an `active` job answers a `ttl_seconds: 1` submission for the whole retention
    of that job's record (days), not one second."""
    async with api.client(TEAM_A_KEY) as a:
        _, old = await post(a, echo(1, "active", unique={"key": "k"}))
        worker.run_next("default")
        created = float(redis_client.hget(KEYS.job(old), "created_at"))
        redis_client.hset(KEYS.job(old), "created_at", repr(created - 3600))  # an hour ago
        status, job_id = await post(a, echo(1, "ttl", unique={"key": "k", "ttl_seconds": 1}))
    assert (status, job_id != old) == (202, True)
