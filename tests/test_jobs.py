"""Jobs through real workers of every tier: success, progress, retries, failures, delays,
cancellation, time limits and completion callbacks."""

import json
import uuid
from datetime import datetime

import httpx
import pytest

from conveyor.core.signing import tenant_secret, verify
from tests.support.processes import TERMINAL, Platform, wait_for_job, wait_until
from tests.support.receiver import receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def client(platform: Platform) -> httpx.Client:
    with platform.http() as client:
        yield client


def submit(client: httpx.Client, **body: object) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def ts(value: object) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


@pytest.mark.parametrize("priority", ["high", "default", "low"])
def test_each_tier_runs_a_job_to_success(
    client: httpx.Client, platform: Platform, priority: str
) -> None:
    job = submit(client, task="demo.echo", args={"payload": {"tier": priority}}, priority=priority)
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["state"] == "succeeded"
    assert done["result"] == {"payload": {"tier": priority}}
    assert done["queue"] == priority
    assert done["attempts"] == 1
    assert done["error"] is None
    assert ts(done["created_at"]) <= ts(done["started_at"]) <= ts(done["finished_at"])
    # Finished records expire after the retention period (7 days by default).
    assert 7 * 24 * 3600 - 60 < platform.redis.ttl(f"conveyor:job:{job['id']}") <= 7 * 24 * 3600


def test_the_worker_that_ran_it_serves_its_tier(client: httpx.Client, platform: Platform) -> None:
    job = submit(client, task="demo.echo", priority="high")
    wait_for_job(client, job["id"], {"succeeded"})
    logs = {s.name: s.log() for s in platform.services}
    assert job["id"] in logs["worker-high"]
    assert job["id"] not in logs["worker-default"] + logs["worker-low"]


def test_progress_is_visible_while_running(client: httpx.Client) -> None:
    job = submit(client, task="demo.sleep", args={"seconds": 3})

    def mid_run() -> dict | None:
        current = client.get(f"/v1/jobs/{job['id']}").json()
        progress = current["progress"]
        running = current["state"] == "running" and progress and 0 < progress["current"] < 3
        return current if running else None

    seen = wait_until(mid_run, 15, "progress mid-run")
    assert seen["progress"]["total"] == 3
    assert seen["progress"]["message"].endswith("s left")
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["state"] == "succeeded"
    assert done["progress"] == {"current": 3.0, "total": 3.0, "message": "done"}


def test_retry_with_backoff_then_success(client: httpx.Client) -> None:
    job = submit(client, task="demo.fail", args={"mode": "retryable", "succeed_on_attempt": 3})
    states = set()

    def finished() -> dict | None:
        current = client.get(f"/v1/jobs/{job['id']}").json()
        states.add(current["state"])
        return current if current["state"] in TERMINAL else None

    done = wait_until(finished, 30, "the retried job to finish", step=0.02)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 3
    assert done["result"] == {"succeeded_on_attempt": 3}
    assert "retrying" in states
    # Backoff 0.5 s then 1 s, each jittered down to no less than half.
    assert ts(done["finished_at"]) - ts(done["created_at"]) >= 0.75


def test_retries_exhausted_is_a_failure(client: httpx.Client) -> None:
    job = submit(client, task="demo.fail", args={"mode": "retryable"}, max_retries=1)
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["state"] == "failed"
    assert done["attempts"] == 2
    assert done["error"] == {"type": "RetryableError", "message": "demo failure"}


def test_permanent_failure_is_not_retried(client: httpx.Client) -> None:
    job = submit(client, task="demo.fail", args={"mode": "permanent", "message": "bad input"})
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["state"] == "failed"
    assert done["attempts"] == 1
    assert done["error"] == {"type": "PermanentError", "message": "bad input"}
    assert "Traceback" not in json.dumps(done)


def test_delayed_job_runs_after_its_delay(client: httpx.Client) -> None:
    job = submit(client, task="demo.echo", delay_seconds=1.5)
    assert job["state"] == "scheduled"
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["state"] == "succeeded"
    assert ts(done["started_at"]) >= ts(done["created_at"]) + 1.5


def test_cancel_running_job_stops_it(client: httpx.Client) -> None:
    job = submit(client, task="demo.sleep", args={"seconds": 30}, priority="high")
    wait_for_job(client, job["id"], {"running"})
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    # The high tier has two children; fill both to prove the cancelled one was freed.
    probes = [submit(client, task="demo.sleep", args={"seconds": 0.5}, priority="high")
              for _ in range(2)]  # fmt: skip
    for probe in probes:
        assert wait_for_job(client, probe["id"], TERMINAL, timeout=20)["state"] == "succeeded"
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "cancelled"
    assert final["result"] is None


def test_cancel_with_terminate_kills_a_job_that_never_reports(
    client: httpx.Client, platform: Platform
) -> None:
    job = submit(client, task="demo.sleep", args={"seconds": 30})
    wait_for_job(client, job["id"], {"running"})
    response = client.post(f"/v1/jobs/{job['id']}/cancel", params={"terminate": "true"})
    assert response.json()["state"] == "cancelled"
    worker = next(s for s in platform.services if s.name == "worker-low")
    worker.wait_for_log("Terminating", timeout=10)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "cancelled"
    assert final["progress"]["current"] < 30


def test_cancelled_queued_job_never_runs(client: httpx.Client, platform: Platform) -> None:
    key = f"count-{uuid.uuid4()}"
    # Occupy both low-tier children so the next job waits in the queue.
    blockers = [submit(client, task="demo.sleep", args={"seconds": 2}) for _ in range(2)]
    job = submit(
        client, task="tests.count", args={"key": key, "redis_url": platform.redis_url},
        priority="low",
    )  # fmt: skip
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    for blocker in blockers:
        wait_for_job(client, blocker["id"], TERMINAL)
    after = submit(client, task="demo.echo", priority="low")
    wait_for_job(client, after["id"], TERMINAL)
    assert platform.redis.get(key) is None
    assert client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 0


def test_soft_time_limit_fails_the_job(client: httpx.Client) -> None:
    job = submit(client, task="demo.sleep", args={"seconds": 20}, timeout_seconds=1)
    done = wait_for_job(client, job["id"], TERMINAL, timeout=20)
    assert done["state"] == "failed"
    assert done["error"]["type"] == "TimeLimitExceeded"


def test_completion_callback_is_a_signed_post_of_the_job(client: httpx.Client) -> None:
    with receiver() as hook:
        job = submit(client, task="demo.echo", args={"payload": "x"}, callback_url=hook.url)
        wait_for_job(client, job["id"], TERMINAL)
        wait_until(lambda: hook.requests, 20, "the callback")
    request = hook.requests[0]
    payload = json.loads(request.body)
    assert payload["id"] == job["id"]
    assert payload["state"] == "succeeded"
    assert payload["result"] == {"payload": "x"}
    # The callback belongs to the job's tenant ("tests", the admin key's) and is signed with
    # that tenant's key.
    signature = request.headers["Conveyor-Signature"]
    assert verify(tenant_secret("test-secret", "tests"), signature, request.body)
    assert not verify(tenant_secret("test-secret", "team-a"), signature, request.body)
    assert not verify("test-secret", signature, request.body)
    callbacks = client.get("/v1/jobs", params={"task": "webhook.deliver"}).json()["items"]
    assert any(c["idempotency_key"] == f"callback:{job['id']}" for c in callbacks)


def test_callback_on_cancel(client: httpx.Client) -> None:
    with receiver() as hook:
        job = submit(client, task="demo.echo", delay_seconds=600, callback_url=hook.url)
        client.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
        wait_until(lambda: hook.requests, 20, "the callback")
    assert json.loads(hook.requests[0].body)["state"] == "cancelled"


def test_team_task_module_runs(client: httpx.Client, platform: Platform) -> None:
    key = f"count-{uuid.uuid4()}"
    job = submit(client, task="tests.count", args={"key": key, "redis_url": platform.redis_url})
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["result"] == {"executions": 1, "attempt": 1}
    assert done["queue"] == "high"


def test_listing_shows_finished_states(client: httpx.Client) -> None:
    job = submit(client, task="demo.fail")
    wait_for_job(client, job["id"], TERMINAL)
    failed = client.get("/v1/jobs", params={"state": "failed", "task": "demo.fail"}).json()
    assert job["id"] in [j["id"] for j in failed["items"]]
    queued = client.get("/v1/jobs", params={"state": "queued", "task": "demo.fail"}).json()
    assert job["id"] not in [j["id"] for j in queued["items"]]


def test_hard_time_limit_fails_the_job_from_the_main_process(
    client: httpx.Client, platform: Platform
) -> None:
    # The task swallows SoftTimeLimitExceeded; the hard limit (soft + 2 s grace here) kills
    # the child, and the worker's main process records the failure.
    job = submit(client, task="tests.stubborn", args={"seconds": 30}, timeout_seconds=1)
    done = wait_for_job(client, job["id"], TERMINAL, timeout=20)
    assert done["state"] == "failed"
    assert done["error"]["type"] == "TimeLimitExceeded"
    assert ts(done["finished_at"]) - ts(done["started_at"]) < 10
    # The tier keeps working after losing a child.
    after = submit(client, task="demo.echo")
    assert wait_for_job(client, after["id"], TERMINAL)["state"] == "succeeded"
