"""Job-store invariants found in review, checked against a real Redis."""

import asyncio
import subprocess
import sys
import time

import pytest
import redis

from conveyor.core.catalog import load_catalog
from conveyor.core.jobs import JobState
from conveyor.core.settings import Settings
from conveyor.core.store import AsyncJobStore, JobStore
from conveyor.core.submit import Submission, prepare
from conveyor.worker.transport import _CLAIM_LUA, consumer_id
from tests.support.processes import REPO, RedisServer


@pytest.fixture
def store(redis_server: RedisServer, redis_db: int) -> JobStore:
    return JobStore(redis_server.client(redis_db), "conveyor", 3600, 7200)


def accept(store: JobStore, **extra: object) -> str:
    catalog = load_catalog([])
    spec = catalog["demo.echo"]
    submission = Submission(tenant="t1", task=spec.name, args={}, queue=spec.queue,
                            max_retries=3, **extra)  # type: ignore[arg-type]  # fmt: skip
    job, message = prepare(catalog["demo.echo"], submission, Settings())
    return store.accept(job, message).job_id


def test_a_stale_copy_of_an_older_generation_is_skipped(store: JobStore) -> None:
    job_id = accept(store)
    assert store.start(job_id, time.time(), 3, generation=0).verdict == "run"
    # The attempt fails and schedules retry generation 1; its worker dies before acking.
    store.transition(job_id, allowed=(JobState.RUNNING,), new_state=JobState.RETRYING,
                     fields={"generation": "1"})  # fmt: skip
    assert store.start(job_id, time.time(), 3, generation=1).verdict == "run"
    stale = store.start(job_id, time.time(), 3, generation=0)
    assert stale.verdict == "skip", "the restored old message must not run beside the retry"
    assert store.client.hget(f"conveyor:job:{job_id}", "deaths") in (None, "0")
    assert store.start(job_id, time.time(), 3).verdict == "run", "no header: stock message"


def test_idempotency_key_lives_until_the_job_ends_then_expires_with_it(store: JobStore) -> None:
    job_id = accept(store, idempotency_key="order-1", delay_seconds=40 * 24 * 3600)
    assert store.client.ttl("conveyor:idem:t1:order-1") == -1, "must outlive a 40-day delay"
    store.transition(job_id, allowed=(JobState.SCHEDULED,), new_state=JobState.CANCELLED)
    assert 0 < store.client.ttl("conveyor:idem:t1:order-1") <= 3600
    assert 0 < store.client.ttl(f"conveyor:job:{job_id}") <= 3600
    assert 0 < store.client.ttl(f"conveyor:events:{job_id}") <= 3600  # the event stream too


def test_replaying_a_dead_letter_keeps_its_tenants_idempotency_key(
    redis_server: RedisServer, redis_db: int, store: JobStore
) -> None:
    job_id = accept(store, idempotency_key="order-2")
    store.start(job_id, time.time(), 3)
    store.transition(job_id, allowed=(JobState.RUNNING,), new_state=JobState.FAILED,
                     delayed=("dead", time.time(), b'{"headers": {}}'))  # fmt: skip
    assert store.client.ttl("conveyor:idem:t1:order-2") > 0
    client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)

    async def replay() -> int:
        try:
            return await AsyncJobStore(client, "conveyor", 3600).replay_dead_letters([job_id])
        finally:
            await client.aclose()

    assert asyncio.run(replay()) == 1
    assert store.client.ttl("conveyor:idem:t1:order-2") == -1, "a live job keeps its key"
    assert store.client.ttl(f"conveyor:events:{job_id}") == -1, "and its event history"
    states = [e[1]["state"] for e in store.client.xrange(f"conveyor:events:{job_id}")]
    assert states == ["running", "failed", "queued"]


async def test_purging_a_job_that_is_not_a_dead_letter_changes_nothing(
    redis_server: RedisServer, redis_db: int, store: JobStore
) -> None:
    job_id = accept(store)
    client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)
    try:
        assert await AsyncJobStore(client, "conveyor", 3600).purge_dead_letters([job_id]) == 0
    finally:
        await client.aclose()
    assert store.client.ttl(f"conveyor:job:{job_id}") == -1, "a live job must not get a TTL"


def test_claim_only_succeeds_while_the_message_is_still_in_flight(store: JobStore) -> None:
    client = store.client
    claim = client.register_script(_CLAIM_LUA)
    args = ["inflight:me", "msg", "unacked", "unacked_index", "tag-1", time.time(), "record"]
    client.lpush("inflight:me", "msg")
    assert claim(args=args) == 1
    assert client.hget("unacked", "tag-1") == "record"
    assert client.llen("inflight:me") == 0
    # A sweeper already moved it back to the queue: the consumer must drop it.
    client.hdel("unacked", "tag-1")
    assert claim(args=args) == 0
    assert client.hget("unacked", "tag-1") is None


def test_consumer_ids_differ_between_processes_even_with_the_same_pid() -> None:
    code = "from conveyor.worker.transport import consumer_id; print(consumer_id())"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO).stdout.strip() for _ in range(3)}  # fmt: skip
    assert len(ids) == 3
    _host, _pid, token = consumer_id().split(":")
    assert len(token) == 8


async def test_replaying_twice_keeps_the_message_runnable(
    redis_server: RedisServer, redis_db: int, store: JobStore
) -> None:
    """A replayed job gets the generation of the message that replays it, whatever it was."""
    import json

    job_id = accept(store)
    client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)
    astore = AsyncJobStore(client, "conveyor", 3600)
    try:
        for stored_generation in (None, 1, 2):  # a message from before generations, then ours
            store.start(job_id, time.time(), 3)
            message = {"headers": {"id": job_id}, "properties": {}}
            if stored_generation is not None:
                message["headers"]["conveyor_generation"] = stored_generation
            dead = ("dead", time.time(), json.dumps(message).encode())
            store.transition(
                job_id, allowed=(JobState.RUNNING,), new_state=JobState.FAILED, delayed=dead
            )
            assert await astore.replay_dead_letters([job_id]) == 1
            started = store.start(job_id, time.time(), 3, generation=stored_generation)
            assert started.verdict == "run", stored_generation
    finally:
        await client.aclose()
