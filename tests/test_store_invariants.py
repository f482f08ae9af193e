"""Job-store invariants found in review, checked against a real Redis."""

import asyncio
import subprocess
import sys
import time

import orjson
import pytest
import redis

from conveyor.core.catalog import load_catalog
from conveyor.core.settings import Settings
from conveyor.jobstore import fairq
from conveyor.jobstore.aio import AsyncJobStore
from conveyor.jobstore.runs import StartVerdict
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission
from conveyor.worker.transport import consumer_id
from tests.support.processes import REPO, RedisServer

SETTINGS = Settings(
    jobs={"retention_seconds": 3600, "dead_letter_retention_seconds": 7200},  # type: ignore[arg-type]
)


@pytest.fixture
def store(redis_server: RedisServer, redis_db: int) -> JobStore:
    return JobStore(redis_server.client(redis_db), SETTINGS)


def accept(store: JobStore, **extra: object) -> str:
    spec = load_catalog([])["demo.echo"]
    submission = Submission.of(spec, tenant="t1", args={}, max_retries=3, **extra)  # type: ignore[arg-type]
    return store.submit(spec, submission).job_id


def dead_letter(store: JobStore, job_id: str, message: bytes) -> None:
    assert store.dead_letter(job_id, '{"type": "X", "message": "x"}', message).applied


def test_a_stale_copy_of_an_older_generation_is_skipped(store: JobStore) -> None:
    job_id = accept(store)
    assert store.start(job_id, generation=0).verdict is StartVerdict.RUN
    # The attempt fails and schedules retry generation 1; its worker dies before acking.
    store.retry(job_id, error="{}", delay=60, message=b"{}", generation=1)
    assert store.start(job_id, generation=1).verdict is StartVerdict.RUN
    stale = store.start(job_id, generation=0)
    assert stale.verdict is StartVerdict.SKIP, "the restored old message must not run beside it"
    assert store.client.hget(f"conveyor:job:{job_id}", "deaths") in (None, "0")
    assert store.start(job_id).verdict is StartVerdict.RUN, "no header: stock message"


def test_idempotency_key_lives_until_the_job_ends_then_expires_with_it(store: JobStore) -> None:
    job_id = accept(store, idempotency_key="order-1", delay_seconds=40 * 24 * 3600)
    assert store.client.ttl("conveyor:idem:t1:order-1") == -1, "must outlive a 40-day delay"
    assert store.start(job_id).verdict is StartVerdict.RUN
    assert store.fail(job_id, '{"type": "X", "message": "x"}').applied
    assert 0 < store.client.ttl("conveyor:idem:t1:order-1") <= 3600
    assert 0 < store.client.ttl(f"conveyor:job:{job_id}") <= 3600
    assert 0 < store.client.ttl(f"conveyor:events:{job_id}") <= 3600  # the event stream too


def test_replaying_a_dead_letter_keeps_its_tenants_idempotency_key(
    redis_server: RedisServer, redis_db: int, store: JobStore
) -> None:
    job_id = accept(store, idempotency_key="order-2")
    store.start(job_id)
    dead_letter(store, job_id, b'{"headers": {}}')
    assert store.client.ttl("conveyor:idem:t1:order-2") > 0
    client = redis.asyncio.Redis(port=redis_server.port, db=redis_db, decode_responses=True)

    async def replay() -> int:
        try:
            return await AsyncJobStore(client, SETTINGS).replay([job_id])
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
        assert await AsyncJobStore(client, SETTINGS).purge([job_id]) == 0
    finally:
        await client.aclose()
    assert store.client.ttl(f"conveyor:job:{job_id}") == -1, "a live job must not get a TTL"


def test_claim_only_succeeds_while_the_token_is_still_in_flight(store: JobStore) -> None:
    client = store.client
    keys = store.keys
    info = {"exchange": "", "routing_key": "default"}
    properties = {"delivery_tag": "tag-1", "delivery_info": info}
    message = orjson.dumps({"body": "", "headers": {"id": "j1"}, "properties": properties})
    fairq.push(client, keys, "default", "team-a", [message])
    inflight = keys.inflight("me", "default")
    token = client.lmove(keys.queue("default"), inflight, "RIGHT", "LEFT")
    # A sweeper moved the token back to the queue (the consumer looked dead): dropped.
    client.lmove(inflight, keys.queue("default"), "RIGHT", "RIGHT")
    assert fairq.claim(client, keys, "default", inflight, token, "unacked", "unacked_index") is None
    assert client.hget("unacked", "tag-1") is None
    assert fairq.ready_count(client, keys, "default", "team-a") == 1, "the message stays ready"

    token = client.lmove(keys.queue("default"), inflight, "RIGHT", "LEFT")
    claimed = fairq.claim(client, keys, "default", inflight, token, "unacked", "unacked_index")
    assert claimed == message.decode()
    assert orjson.loads(client.hget("unacked", "tag-1")) == [orjson.loads(message), "", "default"]
    assert client.zscore("unacked_index", "tag-1") is not None
    assert client.llen(inflight) == 0
    assert fairq.ready_count(client, keys, "default", "team-a") == 0


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
    astore = AsyncJobStore(client, SETTINGS)
    try:
        for stored_generation in (None, 1, 2):  # a message from before generations, then ours
            store.start(job_id)
            message = {"headers": {"id": job_id}, "properties": {}}
            if stored_generation is not None:
                message["headers"]["conveyor_generation"] = stored_generation
            dead_letter(store, job_id, json.dumps(message).encode())
            assert await astore.replay([job_id]) == 1
            started = store.start(job_id, generation=stored_generation)
            assert started.verdict is StartVerdict.RUN, stored_generation
    finally:
        await client.aclose()


def test_a_resent_accept_never_enqueues_a_second_message(store: JobStore) -> None:
    """redis-py resends a script whose reply was lost: the same accept twice is one job."""
    from conveyor.jobstore._calls import accept_calls, parse_accept
    from conveyor.jobstore.results import AcceptVerdict, Limits
    from conveyor.jobstore.scripts import ACCEPT
    from conveyor.jobstore.submission import prepare

    spec = load_catalog([])["demo.echo"]
    job, message = prepare(spec, Submission.of(spec, tenant="t1", args={}), SETTINGS.worker)
    ((args, _),) = accept_calls("conveyor", [(job, message, Limits())])
    first = parse_accept(ACCEPT.run(store.client, args)[0], job)
    again = parse_accept(ACCEPT.run(store.client, args)[0], job)
    assert first.verdict is again.verdict is AcceptVerdict.CREATED
    assert again.job_id == first.job_id
    assert store.client.llen("default") == 1, "a resent accept pushed a second message"


def test_a_resent_start_counts_no_second_attempt_and_no_death(store: JobStore) -> None:
    from conveyor.jobstore._calls import parse_start, start_args
    from conveyor.jobstore.scripts import START

    job_id = accept(store)
    args = start_args("conveyor", job_id, time.time(), 3, None, "host:1", "token-1")
    first = parse_start(START.run(store.client, args))
    again = parse_start(START.run(store.client, args))
    assert first.verdict is again.verdict is StartVerdict.RUN
    record = store.client.hgetall(f"conveyor:job:{job_id}")
    assert record["attempts"] == "1"
    assert record.get("deaths", "0") == "0", "a resent start is not a death"
    # A new delivery (another token) of the still-running job is one: the old worker died.
    other = start_args("conveyor", job_id, time.time(), 3, None, "host:2", "token-2")
    assert parse_start(START.run(store.client, other)).deaths == 1


def test_a_new_start_refreshes_the_run_and_a_repair_of_an_older_view_is_refused(
    store: JobStore,
) -> None:
    job_id = accept(store)
    store.start(job_id)
    store.client.zadd("conveyor:running:default", {job_id: 1})  # the dead run's old renewal
    seen = store.stuck_runs("default", 60)
    assert seen == [(job_id, 1.0)]
    assert store.start(job_id).verdict is StartVerdict.RUN  # a redelivery starts it again
    assert store.stuck_runs("default", 60) == [], "the new run's entry is fresh"
    # A sweep that read the record before that start must not requeue the new run.
    assert store.repair(job_id, b"{}", 1.0, 1, attempts=1) is False
    assert store.client.hget(f"conveyor:job:{job_id}", "state") == "running"
    assert store.client.llen("default") == 1, "only the original message"


def test_a_platform_submission_whose_step_redis_refuses_raises(store: JobStore) -> None:
    """Found by review: callbacks and schedule runs treat a Redis error from `submit` as
    "not enqueued, try again"; a refused step answered as a verdict instead would have
    marked a callback enqueued that never was."""
    store.client.hset(store.keys.idempotency("t1", "broken"), "not", "a string")
    with pytest.raises(redis.ResponseError):
        accept(store, idempotency_key="broken")
