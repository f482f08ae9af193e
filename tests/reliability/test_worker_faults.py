"""Worker deaths, long jobs, poison jobs and graceful shutdown, with real processes."""

import os
import signal
import time
import uuid

import httpx
import pytest

from tests.reliability.conftest import record_figure
from tests.support.processes import TERMINAL, Platform, Service, wait_for_job, wait_until

pytestmark = pytest.mark.slow


def submit(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def work(platform: Platform, seconds: float, **extra: object) -> dict:
    return {"task": "tests.work", "args": {"redis_url": platform.redis_url, "seconds": seconds},
            **extra}  # fmt: skip


def runner_of(workers: list[Service], job_id: str) -> Service:
    return wait_until(
        lambda: next((w for w in workers if f"[{job_id}] received" in w.log()), None),
        20, "a worker to receive the job",
    )  # fmt: skip


def kill_group(service: Service) -> None:
    """SIGKILL the worker and its pool children at once, as an OOM kill or node loss would."""
    os.killpg(service.pid, signal.SIGKILL)
    service.process.wait()


def test_sigkilled_worker_job_is_rerun_elsewhere(fast_platform: Platform) -> None:
    fast_platform.start_api()
    workers = [fast_platform.start_worker("default") for _ in range(2)]
    with fast_platform.http() as client:
        job = submit(client, **work(fast_platform, 3))
        wait_for_job(client, job["id"], {"running"})
        victim = runner_of(workers, job["id"])
        killed_at = time.time()
        kill_group(victim)

        rerun = wait_until(
            lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["attempts"] == 2 and j,
            30, "the job to be redelivered",
        )  # fmt: skip
        done = wait_for_job(client, job["id"], TERMINAL, timeout=30)
    redelivery = rerun["started_at"]
    from datetime import datetime

    seconds = datetime.fromisoformat(redelivery).timestamp() - killed_at
    record_figure("redelivery_after_sigkill", seconds=round(seconds, 2), visibility_timeout=3,
                  restore_interval=1)  # fmt: skip
    assert done["state"] == "succeeded"
    assert done["deaths"] == 1
    assert done["attempts"] == 2
    assert seconds <= 3 + 1 + 3, f"redelivered after {seconds:.1f}s"
    assert fast_platform.redis.hget("completions", job["id"]) == "1"


def test_job_ten_times_the_visibility_timeout_runs_once(fast_platform: Platform) -> None:
    fast_platform.start_api()
    for _ in range(2):  # an idle second worker would take any redelivered copy
        fast_platform.start_worker("default")
    with fast_platform.http() as client:
        job = submit(client, **work(fast_platform, 30))  # 10 x the 3-second lease
        done = wait_for_job(client, job["id"], TERMINAL, timeout=60)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert fast_platform.redis.hget("executions", job["id"]) == "1"


def test_poison_job_is_dead_lettered_while_others_flow(fast_platform: Platform) -> None:
    flag = f"poison-{uuid.uuid4()}"
    fast_platform.redis.set(flag, 1)
    fast_platform.start_api()
    fast_platform.start_worker("default", CONVEYOR_WORKER__CONCURRENCY="2")
    with fast_platform.http() as client:
        poison = submit(client, task="tests.kill_worker",
                        args={"redis_url": fast_platform.redis_url, "flag": flag})  # fmt: skip
        others = [submit(client, task="demo.echo", args={"payload": i}) for i in range(20)]
        for other in others:
            assert wait_for_job(client, other["id"], TERMINAL)["state"] == "succeeded"
        dead = wait_for_job(client, poison["id"], TERMINAL, timeout=60)
        assert dead["state"] == "failed"
        assert dead["error"]["type"] == "WorkerLost"
        assert dead["deaths"] == 3
        assert dead["dead_lettered_at"] is not None
        assert fast_platform.redis.hget("executions", poison["id"]) == "3"
        listed = client.get("/v1/dead-letters").json()["items"]
        assert [j["id"] for j in listed] == [poison["id"]]

        # Fix the cause, replay: the same job runs again and succeeds.
        fast_platform.redis.delete(flag)
        replayed = client.post(f"/v1/dead-letters/{poison['id']}/replay")
        assert replayed.status_code == 200
        assert replayed.json()["state"] in ("queued", "running", "succeeded")
        done = wait_for_job(client, poison["id"], TERMINAL)
        assert done["state"] == "succeeded"
        assert done["id"] == poison["id"]
        assert done["error"] is None
        assert done["dead_lettered_at"] is None
        assert done["attempts"] == 4
        assert client.get("/v1/dead-letters").json()["items"] == []
        assert client.post(f"/v1/dead-letters/{poison['id']}/replay").status_code == 404


def test_exhausted_retries_are_dead_lettered_then_replayed_or_purged(
    fast_platform: Platform,
) -> None:
    fast_platform.start_api()
    fast_platform.start_worker("default")
    with fast_platform.http() as client:
        jobs = [submit(client, task="demo.fail", args={"mode": "retryable"}, max_retries=1)
                for _ in range(3)]  # fmt: skip
        permanent = submit(client, task="demo.fail", args={"mode": "permanent"})
        for job in [*jobs, permanent]:
            wait_for_job(client, job["id"], TERMINAL)
        dead = {j["id"] for j in client.get("/v1/dead-letters").json()["items"]}
        assert dead == {j["id"] for j in jobs}, "only exhausted retries are dead letters"
        ttl = fast_platform.redis.ttl(f"conveyor:job:{jobs[0]['id']}")
        assert ttl > 7 * 24 * 3600, "dead letters outlive the normal retention"

        assert client.post("/v1/dead-letters/replay").json() == {"count": 3}
        for job in jobs:  # they fail again (the cause is still there) and come back
            wait_until(
                lambda j=job: client.get(f"/v1/jobs/{j['id']}").json()["attempts"] == 4,
                30, "the replayed job to fail again",
            )  # fmt: skip
        wait_until(lambda: len(client.get("/v1/dead-letters").json()["items"]) == 3, 30,
                   "the replayed jobs to be dead-lettered again")  # fmt: skip
        assert client.request("DELETE", "/v1/dead-letters").json() == {"count": 3}
        assert client.get("/v1/dead-letters").json()["items"] == []
        assert 0 < fast_platform.redis.ttl(f"conveyor:job:{jobs[0]['id']}") <= 7 * 24 * 3600


def test_sigterm_lets_a_short_job_finish_and_hands_a_long_one_back(
    fast_platform: Platform,
) -> None:
    fast_platform.start_api()
    first = fast_platform.start_worker("default")
    with fast_platform.http() as client:
        short = submit(client, **work(fast_platform, 1))
        wait_for_job(client, short["id"], {"running"})
        first.signal(signal.SIGTERM)
        assert first.process.wait(15) == 0
        assert wait_for_job(client, short["id"], TERMINAL)["state"] == "succeeded"

        second = fast_platform.start_worker("default")
        long = submit(client, **work(fast_platform, 60))
        wait_for_job(client, long["id"], {"running"})
        terminated_at = time.monotonic()
        second.signal(signal.SIGTERM)
        assert second.process.wait(15) == 0
        stopped_after = time.monotonic() - terminated_at
        # Handed back at once: queued again, message on the queue, no visibility timeout wait.
        assert fast_platform.redis.llen("default") == 1
        assert client.get(f"/v1/jobs/{long['id']}").json()["state"] == "queued"
        record_figure("sigterm_hand_back", seconds=round(stopped_after, 2), shutdown_timeout=2)
        assert stopped_after < 2 + 5

        fast_platform.start_worker("default")
        wait_until(
            lambda: client.get(f"/v1/jobs/{long['id']}").json()["state"] == "running", 20,
            "the handed-back job to start again",
        )  # fmt: skip
        resumed = client.get(f"/v1/jobs/{long['id']}").json()
    assert resumed["attempts"] == 2
    assert resumed["deaths"] == 0, "a graceful hand-back is not a worker death"
    assert fast_platform.redis.hget("executions", short["id"]) == "1", "finished job re-ran"
