"""accept.lua with many jobs in one call answers and writes exactly what the same jobs
accepted one call each would: the oracle is the one-job call, run on a database of its own
with the very same prepared jobs (ids, times, messages).

Against a real Redis: the batch path gathers its writes (indexes, pushes, the bucket, quota
usage) and keeps the counts its checks read in step with them, which is what could diverge.
"""

import random
from typing import Any

import orjson
import pytest
import redis

from conveyor.core.catalog import load_catalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore._calls import ACCEPT_BATCH, accept_calls, parse_accept
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.model import NewJob, UniqueMode, UniqueSpec
from conveyor.jobstore.results import AcceptResult, Limits
from conveyor.jobstore.scripts import ACCEPT
from conveyor.jobstore.submission import Submission, prepare
from tests.conftest import fresh_db
from tests.support.processes import RedisServer

SETTINGS = Settings()
SPEC = load_catalog([])["demo.echo"]
KEYS = KeySpace("conveyor")
Prepared = tuple[NewJob, bytes, Limits]
TIERS = (Queue.DEFAULT, Queue.HIGH)


def _job(
    n: int,
    tenant: str = "t1",
    *,
    queue: Queue = Queue.DEFAULT,
    key: str | None = None,
    payload: object = None,
    delay: float = 0.0,
    unique: UniqueSpec | None = None,
    limits: Limits | None = None,
) -> Prepared:
    submission = Submission.of(
        SPEC,
        tenant=tenant,
        args={"payload": n if payload is None else payload},
        priority=queue,
        idempotency_key=key,
        delay_seconds=delay,
        unique=unique,
    )
    job, message = prepare(SPEC, submission, SETTINGS.worker, now=1_800_000_000.0 + n / 1000)
    return job, message, limits or Limits()


def _run(client: "redis.Redis", jobs: list[Prepared], batched: bool) -> list[AcceptResult]:
    groups = [jobs] if batched else [[job] for job in jobs]
    results: list[AcceptResult] = []
    for group in groups:
        offset = 0
        for argv, count in accept_calls("conveyor", group):
            replies = ACCEPT.run(client, argv)
            assert len(replies) == count
            results += [
                parse_accept(reply, job)
                for reply, (job, _, _) in zip(replies, group[offset : offset + count], strict=True)
            ]
            offset += count
    return results


def _answers(results: list[AcceptResult]) -> list[tuple[Any, ...]]:
    return [(r.verdict, r.job_id, r.tokens_left, r.retry_after_ms > 0, r.depth, r.quota)
            for r in results]  # fmt: skip


def _contents(client: "redis.Redis") -> dict[str, Any]:
    """Every key's type, content and whether it expires, with what Redis' clock decides (due
    times, ready tokens, stream ids, the bucket's refill time) left out: the two runs read the
    clock at different instants.
    """
    state: dict[str, Any] = {}
    for raw in client.scan_iter(count=1000):
        key = _text(raw)
        kind = _text(client.type(key))
        value: Any
        if kind == "string":
            text = _text(client.get(key))
            value = int(float(text.split()[0])) if ":bucket:" in key else text
        elif kind == "hash":
            value = {_text(k): _text(v) for k, v in client.hgetall(key).items()}
            value.pop("scheduled_for", None)
        elif kind == "list":
            items = [_text(v) for v in client.lrange(key, 0, -1)]
            value = len(items) if key in {KEYS.queue(q) for q in Queue} else items
        elif kind == "zset":
            members = client.zrange(key, 0, -1, withscores=True)
            value = sorted(_text(m) for m, _ in members) if key == KEYS.delayed else members
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "stream":
            value = [fields for _, fields in client.xrange(key)]
        else:  # pragma: no cover - accept writes no other type
            raise AssertionError(f"{key}: {kind}")
        state[key] = (kind, value, client.ttl(key) > 0)
    return state


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _same_as_one_by_one(redis_server: RedisServer, jobs: list[Prepared]) -> list[AcceptResult]:
    batched_db, single_db = (
        redis_server.client(fresh_db(redis_server)),
        redis_server.client(fresh_db(redis_server)),
    )
    batched = _run(batched_db, jobs, batched=True)
    single = _run(single_db, jobs, batched=False)
    assert _answers(batched) == _answers(single)
    assert _contents(batched_db) == _contents(single_db)
    return batched


def test_limits_that_run_out_within_a_call_refuse_its_later_jobs(
    redis_server: RedisServer,
) -> None:
    """Tokens, the tier's depth, the delayed set and the tenant's quotas are spent by the
    call's own earlier jobs."""
    burst = Limits(rate_per_second=0.000001, burst=6)
    depth = Limits(max_queue_depth=4)
    delayed = Limits(max_delayed_jobs=3)
    quota = Limits(max_queued_per_tier=3, max_delayed_per_tenant=2, max_bytes=6_000)
    jobs = [
        *(_job(n, "rate", limits=burst) for n in range(9)),
        *(_job(10 + n, "depth", queue=Queue.LOW, limits=depth) for n in range(6)),
        *(_job(20 + n, "later", delay=60, limits=delayed) for n in range(5)),
        *(_job(30 + n, "quota", queue=TIERS[n % 2], limits=quota) for n in range(9)),
        *(_job(40 + n, "quota", delay=30, limits=quota) for n in range(3)),
        *(_job(50 + n, "quota", payload="x" * 3_000, limits=quota) for n in range(2)),
    ]
    results = _same_as_one_by_one(redis_server, jobs)
    verdicts = [str(r.verdict) for r in results]
    assert verdicts[:9] == ["created"] * 6 + ["rate_limited"] * 3
    assert verdicts[9:15] == ["created"] * 4 + ["queue_full"] * 2
    assert verdicts[15:20] == ["created"] * 3 + ["queue_full"] * 2
    assert {"created", "quota_exceeded"} == set(verdicts[20:])


def test_keys_and_uniqueness_see_the_calls_own_earlier_jobs(redis_server: RedisServer) -> None:
    """A replay, a conflicting reuse of a key, and every uniqueness mode, whose first holder
    is a job of the same call."""
    queued = UniqueSpec(key="q", mode=UniqueMode.QUEUED)
    ttl = UniqueSpec(key="t", mode=UniqueMode.TTL, ttl_seconds=60)
    debounce = UniqueSpec(key="task", mode=UniqueMode.DEBOUNCE)
    first = _job(1, key="k1")
    jobs = [
        first,
        (first[0], first[1], first[2]),  # the same call resent: the job exists already
        _job(1, key="k1"),  # a replay: the same request under the same key
        _job(2, key="k1"),  # another request under that key: a conflict
        _job(3, unique=queued),
        _job(4, unique=queued, key="k4"),
        _job(5, unique=ttl),
        _job(6, unique=ttl),
        _job(7, unique=debounce, delay=30),
        _job(8, unique=debounce, delay=40, queue=Queue.HIGH, key="k8"),
        _job(9, key="k9", delay=20),
        _job(10, "t2", key="k1"),  # another tenant's key of the same name
    ]
    results = _same_as_one_by_one(redis_server, jobs)
    verdicts = [str(r.verdict) for r in results]
    assert verdicts == [
        *("created", "created", "existing", "conflict", "created", "existing"),
        *("created", "existing", "created", "existing", "created", "created"),
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_random_mix_is_answered_as_one_by_one(redis_server: RedisServer, seed: int) -> None:
    """Tenants, tiers, delays, keys (some reused), uniqueness and limits, mixed at random,
    across more jobs than one call takes (so split into calls)."""
    rng = random.Random(seed)
    modes = [None, None, None, *UniqueMode]
    jobs = []
    for n in range(ACCEPT_BATCH + 40):
        tenant = rng.choice(["a", "b", "c"])
        mode = rng.choice(modes)
        delay = rng.choice([0, 0, 0, 30])
        if mode is UniqueMode.DEBOUNCE:
            delay = 30
        limits = Limits(
            rate_per_second=0.000001,
            burst=rng.choice([1_000, 60]),
            max_queue_depth=rng.choice([0, 40]),
            max_delayed_jobs=20,
            max_queued_per_tier=rng.choice([0, 25]),
            max_bytes=rng.choice([0, 40_000]),
        )
        jobs.append(
            _job(
                n,
                tenant,
                queue=rng.choice(list(Queue)),
                key=rng.choice([None, f"k{rng.randrange(30)}"]),
                payload=rng.randrange(5),
                delay=delay,
                unique=None if mode is None else UniqueSpec(f"u{rng.randrange(4)}", mode, 60),
                limits=limits,
            )
        )
    _same_as_one_by_one(redis_server, jobs)


def test_a_job_redis_refuses_stands_for_itself(redis_server: RedisServer) -> None:
    """A key of the wrong type fails that job's step: it is answered as refused, nothing of
    it is queued, and the call's other jobs are accepted whole."""
    client = redis_server.client(fresh_db(redis_server))
    jobs = [_job(1, key="a"), _job(2, key="broken"), _job(3, key="c")]
    client.hset(KEYS.idempotency("t1", "broken"), "not", "a string")
    results = _run(client, jobs, batched=True)
    assert [str(r.verdict) for r in results] == ["created", "broker_error", "created"]
    assert client.llen(KEYS.queue(Queue.DEFAULT)) == 2
    assert client.zcard(KEYS.index_all) == 2
    assert not client.exists(KEYS.job(jobs[1][0].id))


def test_a_write_refused_while_gathered_writes_are_made_fails_the_whole_call(
    redis_server: RedisServer,
) -> None:
    """Found by review: a lock read makes the gathered writes first; one Redis refused there
    (a key of the wrong type) left the rest gathered, made a second time at the end (a
    message pushed twice) while the jobs before it stood answered as accepted. Now the call
    fails whole (the API answers 503 for each of its jobs), nothing is made twice, and no
    idempotency key names a job of it."""
    client = redis_server.client(fresh_db(redis_server))
    jobs = [
        _job(1, "a", key="k1"),  # queued: its push and its key are gathered
        _job(2, "z", delay=30),  # delayed: its quota usage update is gathered
        _job(3, "a", unique=UniqueSpec("u", UniqueMode.QUEUED)),  # its lock read flushes
    ]
    client.set(KEYS.quota("z"), "not a hash")
    with pytest.raises(redis.ResponseError):
        _run(client, jobs, batched=True)
    messages = client.lrange(KEYS.fair_jobs(Queue.DEFAULT, "a"), 0, -1)
    assert sum(jobs[0][0].id in _text(m) for m in messages) <= 1, "a message pushed twice"
    assert client.llen(KEYS.queue(Queue.DEFAULT)) == len(messages)
    assert not client.exists(KEYS.idempotency("a", "k1"))


@pytest.mark.parametrize("shape", ["reordered", "object"])
def test_a_record_not_in_the_scripts_shape_is_that_jobs_error(
    redis_server: RedisServer, shape: str
) -> None:
    """accept.lua reads the record's head by position: a record with its head in another
    order (or an object, as an earlier release sent it) is answered as that job's error,
    with nothing written, and the call's other jobs are accepted whole."""
    client = redis_server.client(fresh_db(redis_server))
    jobs = [_job(1), _job(2), _job(3)]
    [(argv, count)] = accept_calls("conveyor", jobs)
    assert count == 3
    bad = jobs[1][0].record
    head = 10  # the call's head; then 6 arguments per job, the record first
    if shape == "object":
        argv[head + 6] = orjson.dumps(bad)
    else:
        swapped = {"tenant": bad["tenant"], "id": bad["id"], **bad}
        argv[head + 6] = orjson.dumps([item for pair in swapped.items() for item in pair])
    replies = ACCEPT.run(client, argv)
    assert [reply[0] for reply in replies] == [1, 5, 1]
    assert not client.exists(KEYS.job(jobs[1][0].id))
    assert client.zscore(KEYS.index_all, jobs[1][0].id) is None
    assert client.llen(KEYS.queue(Queue.DEFAULT)) == 2
