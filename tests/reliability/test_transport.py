"""The reliable-consume transport: pop and unacked record are never apart; a dead
consumer's in-flight messages come back; a live consumer's are left alone."""

import signal
import time

import httpx
import pytest

from tests.support.processes import TERMINAL, Platform, wait_for_job, wait_until

pytestmark = pytest.mark.slow


def test_consumed_messages_leave_no_inflight_residue(fast_platform: Platform) -> None:
    fast_platform.start_api()
    worker = fast_platform.start_worker("default")
    redis = fast_platform.redis
    with fast_platform.http() as client:
        jobs = [client.post("/v1/jobs", json={"task": "demo.echo"}).json() for _ in range(20)]
        for job in jobs:
            assert wait_for_job(client, job["id"], TERMINAL)["state"] == "succeeded"
        heartbeats = redis.zrange("conveyor:consumers:default", 0, -1, withscores=True)
        assert len(heartbeats) == 1
        assert time.time() - heartbeats[0][1] < 3
        inflight = redis.keys("conveyor:inflight:*")
        assert all(redis.llen(key) == 0 for key in inflight)
        assert redis.hlen("unacked") == 0
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(15) == 0
    assert redis.zrange("conveyor:consumers:default", 0, -1) == [], "a clean stop retires it"


def test_dead_consumers_inflight_messages_are_requeued(fast_platform: Platform) -> None:
    fast_platform.start_api()
    redis = fast_platform.redis
    with fast_platform.http() as client:
        lost = client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": 1}}).json()
        kept = client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": 2}}).json()
        # Two consumers took one message each and died before recording them as unacked;
        # one of them still looks alive (its heartbeat is fresh).
        redis.lmove("default", "conveyor:inflight:ghost:1:default", "RIGHT", "LEFT")
        redis.lmove("default", "conveyor:inflight:ghost:2:default", "RIGHT", "LEFT")
        redis.zadd("conveyor:consumers:default", {"ghost:1": time.time() - 60})
        redis.zadd("conveyor:consumers:default", {"ghost:2": time.time() + 60})
        assert redis.llen("default") == 0

        worker = fast_platform.start_worker("default")
        assert wait_for_job(client, lost["id"], TERMINAL)["state"] == "succeeded"
        assert redis.llen("conveyor:inflight:ghost:1:default") == 0
        wait_until(lambda: "requeued 1 in-flight" in worker.log(), 10, "the recovery log line")
        assert client.get(f"/v1/jobs/{kept['id']}").json()["state"] == "queued"
        assert redis.llen("conveyor:inflight:ghost:2:default") == 1, "live consumer untouched"

        redis.zadd("conveyor:consumers:default", {"ghost:2": 0})  # ...until it dies too
        assert wait_for_job(client, kept["id"], TERMINAL)["state"] == "succeeded"


def _succeeded(client: "httpx.Client", jobs: list[dict[str, object]]) -> int:
    return sum(client.get(f"/v1/jobs/{job['id']}").json()["state"] == "succeeded" for job in jobs)


def _backlog(client: "httpx.Client", count: int) -> list[dict[str, object]]:
    """`count` demo.echo jobs accepted in one batch, before any worker runs."""
    body = {"jobs": [{"task": "demo.echo", "args": {"payload": n}} for n in range(count)]}
    items = client.post("/v1/jobs/batch", json=body).json()["items"]
    return [item["job"] for item in items]


def test_a_backlog_is_taken_and_claimed_in_one_step(fast_platform: Platform) -> None:
    """While a tier has a backlog a consumer takes its next token inside the claim script
    (one round trip per delivery) instead of a blocking pop and then a claim."""
    fast_platform.start_api()
    redis = fast_platform.redis
    with fast_platform.http() as client:
        jobs = _backlog(client, 40)
        blmoves_before = redis.info("commandstats").get("cmdstat_blmove", {}).get("calls", 0)
        fast_platform.start_worker("default")
        wait_until(lambda: _succeeded(client, jobs) == len(jobs), 60, "the backlog to drain")
    blmoves = redis.info("commandstats").get("cmdstat_blmove", {}).get("calls", 0)
    assert blmoves - blmoves_before < len(jobs) / 2, "most deliveries took their own token"
    assert redis.hlen("unacked") == 0
    assert all(redis.llen(key) == 0 for key in redis.keys("conveyor:inflight:*"))
    assert redis.llen("default") == 0


def test_a_flushed_script_cache_mid_drain_loses_nothing(fast_platform: Platform) -> None:
    """A new primary, or SCRIPT FLUSH, answers the take with NOSCRIPT: the consumer blocks and
    claims as before (loading the script again), and every job still runs once."""
    fast_platform.start_api()
    redis = fast_platform.redis
    with fast_platform.http() as client:
        jobs = _backlog(client, 60)
        worker = fast_platform.start_worker("default")
        wait_until(lambda: _succeeded(client, jobs) >= 5, 60, "the drain to start")
        redis.script_flush()
        wait_until(lambda: _succeeded(client, jobs) == len(jobs), 60, "the backlog to drain")
        assert all(client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 1 for job in jobs)
    assert worker.process.poll() is None, worker.log()[-2000:]
    assert redis.hlen("unacked") == 0
    assert redis.llen("default") == 0


@pytest.mark.parametrize("fault", ["readonly", "oom"])
def test_a_write_refusal_mid_drain_does_not_end_the_worker(
    fast_platform: Platform, fault: str
) -> None:
    """A Redis that refuses writes for a while (a primary demoted to replica, or full under
    `noeviction`) is a connection error for the worker: it backs off and reconnects. redis-py
    8 strips the code from the messages of the errors it knows (READONLY, OOM): a worker that
    matched the message took them for fatal and exited (found by a review)."""
    fast_platform.start_api()
    redis = fast_platform.redis
    with fast_platform.http() as client:
        jobs = _backlog(client, 100)
        worker = fast_platform.start_worker("default")
        wait_until(lambda: _succeeded(client, jobs) >= 5, 60, "the drain to start")
        if fault == "readonly":
            redis.replicaof("127.0.0.1", "1")  # a replica of nobody: keeps its data, refuses writes
        else:
            redis.config_set("maxmemory", 1)  # noeviction (the test Redis's policy): refuses writes
        try:
            time.sleep(2)
        finally:
            if fault == "readonly":
                redis.replicaof("no", "one")
            else:
                redis.config_set("maxmemory", 0)
        time.sleep(1)
        assert worker.process.poll() is None, worker.log()[-3000:]
        wait_until(lambda: _succeeded(client, jobs) == len(jobs), 90, "the backlog to drain")
