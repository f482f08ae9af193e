"""Reliability round 2, with real processes: paused workers and fencing, runs that end in odd
ways, Redis restarts under a running job, skewed clocks, pending callbacks, and beat riding
out Redis."""

import os
import shutil
import signal
import time
from pathlib import Path

import orjson
import pytest
import redis

from conveyor.core.catalog import load_catalog
from conveyor.core.settings import Settings
from conveyor.jobstore import fairq
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission
from tests.reliability.conftest import FAST, record_figure
from tests.reliability.test_worker_faults import submit, work
from tests.support.processes import (
    TERMINAL,
    Platform,
    RedisServer,
    Service,
    conveyor_argv,
    start_redis,
    wait_for_job,
    wait_until,
)
from tests.test_beat import SCHEDULE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("paused", ["whole worker", "main process only"])
def test_a_paused_worker_never_overwrites_the_newer_attempt(
    fast_platform: Platform, paused: str
) -> None:
    """Paused past its lease, a worker's job runs again elsewhere (at-least-once); when the
    paused run resumes, its writes are refused and it stops: the record is the newer
    attempt's, and the second run is explained by a recorded death."""
    fast_platform.start_api()
    first = fast_platform.start_worker("default")
    with fast_platform.http() as client:
        job = submit(client, **work(fast_platform, 5))
        wait_for_job(client, str(job["id"]), {"running"})
        if paused == "whole worker":
            os.killpg(first.pid, signal.SIGSTOP)
        else:
            first.signal(signal.SIGSTOP)
        try:
            fast_platform.start_worker("default")
            wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 2, 20,
                       "another worker to take the job over")  # fmt: skip
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        done = wait_for_job(client, str(job["id"]), TERMINAL, timeout=30)
        time.sleep(2)  # the resumed run's last chance to overwrite anything
        final = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == final["state"] == "succeeded"
    assert final["result"]["attempt"] == 2, "the record holds the newer attempt's outcome"
    assert final["attempts"] == 2
    assert final["deaths"] == 1, "the re-run is explained by a recorded death"
    redis = fast_platform.redis
    assert redis.hget("executions", str(job["id"])) == "2", "at-least-once: it ran twice"
    assert redis.hget("completions", str(job["id"])) == "1", "the superseded run stopped"
    assert "newer attempt" in first.log()
    record_figure("paused_worker", paused=paused, attempts=2, completions=1)


@pytest.mark.parametrize(
    ("mode", "error_type", "message"),
    [
        ("cancelled", "CancelledError", ""),
        ("base", "_Escape", "escaping"),
        ("unprintable", "_Unprintable", "<_Unprintable that cannot be printed>"),
    ],
)
def test_a_run_that_escapes_oddly_still_ends_failed(
    platform: Platform, mode: str, error_type: str, message: str
) -> None:
    with platform.http() as client:
        job = submit(client, task="tests.escape", args={"mode": mode})
        done = wait_for_job(client, str(job["id"]), TERMINAL, timeout=30)
    assert done["state"] == "failed", done
    assert done["error"] == {"type": error_type, "message": message}
    assert platform.redis.zscore("conveyor:running:default", str(job["id"])) is None


def test_a_redis_restart_does_not_kill_a_running_job(
    redis_server: RedisServer, log_dir: Path, tmp_path: Path
) -> None:
    server = start_redis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    env = {**FAST, "CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS": "10"}
    platform = Platform(server, 0, log_dir, **env,
                        CONVEYOR_WORKER__HEARTBEAT_FILE=str(tmp_path / "hb"))  # fmt: skip
    try:
        platform.start_api()
        platform.start_worker("default")
        with platform.http() as client:
            job = submit(client, **work(platform, 8))
            wait_for_job(client, str(job["id"]), {"running"})
            for _ in range(3):
                server.process.terminate()
                server.process.wait(10)
                server = start_redis(tmp_path / "redis", "--appendonly", "yes",
                                     "--appendfsync", "always", port=server.port)  # fmt: skip
                time.sleep(1)
            done = wait_for_job(client, str(job["id"]), TERMINAL, timeout=40)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 1, "the run survived three broker restarts"
        assert done["deaths"] == 0, "a broker blip is never a worker death"
        assert platform.redis.hget("executions", str(job["id"])) == "1"
    finally:
        platform.stop()
        server.process.terminate()
        server.process.wait(10)


def _skewed(platform: Platform, queue: str, offset: str) -> Service:
    faketime = shutil.which("faketime")
    assert faketime, "faketime comes from Debian (make test installs it)"
    argv = [faketime, "-f", offset, *conveyor_argv("worker", "--queue", queue)]
    worker = platform.start(f"skewed-{queue}", argv)
    worker.wait_for_log(" ready.", timeout=40)
    return worker


def test_a_skewed_clock_neither_steals_a_live_lease_nor_runs_a_delayed_job_early(
    fast_platform: Platform,
) -> None:
    """A worker whose clock runs 10 s ahead: leases and due times are Redis' clock."""
    fast_platform.start_api()
    honest = fast_platform.start_worker("default")
    with fast_platform.http() as client:
        long = submit(client, **work(fast_platform, 6))
        wait_for_job(client, str(long["id"]), {"running"})
        skewed = _skewed(fast_platform, "default", "+10s")
        submitted = time.monotonic()
        delayed = submit(client, **work(fast_platform, 0), delay_seconds=5)
        wait_until(lambda: client.get(f"/v1/jobs/{delayed['id']}").json()["state"] != "scheduled",
                   20, "the delayed job to become due")  # fmt: skip
        due_after = time.monotonic() - submitted
        done = wait_for_job(client, str(long["id"]), TERMINAL, timeout=30)
        wait_for_job(client, str(delayed["id"]), TERMINAL, timeout=30)
    assert done["attempts"] == 1, "the skewed worker took a live delivery"
    assert fast_platform.redis.hget("executions", str(long["id"])) == "1"
    assert due_after >= 4.5, f"a 5 s delay became due after {due_after:.1f}s"
    record_figure("skewed_clock", offset_seconds=10, delayed_due_after=round(due_after, 2))
    assert honest.process.poll() is None
    assert skewed.process.poll() is None


def test_a_pending_callback_is_enqueued_by_beat_when_its_worker_never_did(
    redis_server: RedisServer, log_dir: Path, redis_db: int
) -> None:
    platform = Platform(redis_server, redis_db, log_dir,
                        CONVEYOR_BEAT__CALLBACK_SWEEP_AFTER_SECONDS="1")  # fmt: skip
    settings = Settings(redis_url=platform.redis_url)  # type: ignore[arg-type]
    store = JobStore(redis_server.client(redis_db), settings)
    spec = load_catalog([])["demo.echo"]
    submission = Submission.of(
        spec, tenant="t1", args={"payload": 1}, callback_url="https://example.com/hook"
    )
    job_id = store.submit(spec, submission).job_id
    store.start(job_id)
    # The worker wrote the outcome, then died before enqueuing the callback.
    assert store.succeed(job_id, orjson.dumps({"ok": True}).decode()).callback_pending
    assert store.client.zscore("conveyor:callbacks:pending", job_id) is not None
    try:
        platform.start("beat", conveyor_argv("beat")).wait_for_log("Acquired lock")

        def callback_job() -> str | None:
            for callback_id in store.client.zrange("conveyor:index:task:webhook.deliver", 0, -1):
                record = store.client.hgetall(f"conveyor:job:{callback_id}")
                if record.get("idempotency_key") == f"callback:{job_id}":
                    return str(callback_id)
            return None

        wait_until(callback_job, 20, "beat to enqueue the pending callback")
        wait_until(lambda: store.client.zcard("conveyor:callbacks:pending") == 0, 10,
                   "the pending mark to be cleared")  # fmt: skip
        assert store.client.zcard("conveyor:index:task:webhook.deliver") == 1
    finally:
        platform.stop()


def test_beat_rides_out_a_redis_outage_and_an_emptied_redis(log_dir: Path, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", "--appendonly", "yes")
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(SCHEDULE)
    platform = Platform(server, 0, log_dir, CONVEYOR_SCHEDULE_FILE=str(schedule),
                        CONVEYOR_BEAT__LOCK_TIMEOUT_SECONDS="3",
                        CONVEYOR_BEAT__MAX_INTERVAL_SECONDS="0.5",
                        CONVEYOR_REDIS_DURABILITY_CHECK="off")  # fmt: skip

    def runs() -> int:
        return int(platform.redis.zcard("conveyor:index:task:demo.echo"))

    try:
        beat = platform.start("beat", conveyor_argv("beat"))
        beat.wait_for_log("Acquired lock")
        wait_until(lambda: runs() >= 2, 10, "periodic runs")
        server.process.terminate()
        server.process.wait(10)
        time.sleep(4)  # longer than the lock timeout
        assert beat.process.poll() is None, f"beat exited during the outage:\n{beat.log()[-2000:]}"
        server = start_redis(tmp_path / "redis", "--appendonly", "yes", port=server.port)
        before = runs()
        wait_until(lambda: runs() >= before + 2, 20, "periodic runs after the outage")
        platform.redis.flushall()  # a failover to an empty Redis: lock and schedule gone
        wait_until(lambda: runs() >= 2, 20, "periodic runs after Redis was emptied")
        assert beat.process.poll() is None, beat.log()[-2000:]
        assert "leader lock" in beat.log()
    finally:
        platform.stop()
        server.process.terminate()
        server.process.wait(10)


def take_and_ack(client: "redis.Redis", queue: str) -> None:
    """Claim the next message of `queue` as the transport does, and ack it at once."""
    keys = KeySpace("conveyor")
    inflight = keys.inflight("gone", queue)
    token = client.lmove(keys.queue(queue), inflight, "RIGHT", "LEFT")
    assert token is not None
    raw = fairq.claim(client, keys, queue, inflight, token, "unacked", "unacked_index")
    assert raw is not None
    tag = orjson.loads(raw)["properties"]["delivery_tag"]
    client.hdel("unacked", tag)
    client.zrem("unacked_index", tag)


def test_a_run_nobody_renews_is_repaired_and_a_live_long_run_is_not(
    fast_platform: Platform,
) -> None:
    """A `running` record whose run was abandoned (acked with no outcome: nothing renews it,
    no delivery of it is unacked) is queued again by the beat leader within a few leases;
    a long run that its worker renews is left alone."""
    settings = Settings(redis_url=fast_platform.redis_url)  # type: ignore[arg-type]
    store = JobStore(fast_platform.redis, settings)
    fast_platform.start_api()
    fast_platform.start("beat", conveyor_argv("beat")).wait_for_log("Acquired lock")
    with fast_platform.http() as client:
        live = submit(client, **work(fast_platform, 16))
        abandoned = submit(client, **work(fast_platform, 0.1), priority="low")
        # The abandoned run: started, its message then acked without an outcome.
        take_and_ack(fast_platform.redis, "low")
        store.start(str(abandoned["id"]))
        fast_platform.start_worker("default")
        wait_for_job(client, str(live["id"]), {"running"})
        lease = int(FAST["CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS"])
        wait_until(lambda: client.get(f"/v1/jobs/{abandoned['id']}").json()["state"] == "queued",
                   5 * lease + 10, "the sweep to queue the abandoned run again")  # fmt: skip
        fast_platform.start_worker("low")
        repaired = wait_for_job(client, str(abandoned["id"]), TERMINAL, timeout=30)
        long_run = wait_for_job(client, str(live["id"]), TERMINAL, timeout=40)
    assert repaired["state"] == "succeeded"
    assert fast_platform.redis.hget(f"conveyor:job:{abandoned['id']}", "repairs") == "1"
    assert long_run["state"] == "succeeded"
    assert long_run["attempts"] == 1, "a renewed run is never repaired"
    assert fast_platform.redis.hget(f"conveyor:job:{live['id']}", "repairs") is None
    assert fast_platform.redis.hget("executions", str(live["id"])) == "1"


def test_a_killed_workers_remote_control_binding_is_pruned_and_a_live_ones_kept(
    fast_platform: Platform,
) -> None:
    settings = Settings(redis_url=fast_platform.redis_url)  # type: ignore[arg-type]
    store = JobStore(fast_platform.redis, settings)
    bindings = "_kombu.binding.celery.pidbox"
    live = fast_platform.start_worker("default")
    doomed = [fast_platform.start_worker("low") for _ in range(3)]
    assert fast_platform.redis.scard(bindings) == 4
    for worker in doomed:
        os.killpg(worker.pid, signal.SIGKILL)
    lease = int(FAST["CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS"])
    assert store.prune_dead_nodes(lease) == 0, "silent for less than a lease: not yet dead"
    time.sleep(lease + 1)
    assert store.prune_dead_nodes(lease) == 3
    members = fast_platform.redis.smembers(bindings)
    assert [m for m in members if f".{live.pid}@" in m] == list(members), members
    assert live.process.poll() is None
