"""Jobs through real workers of every tier: success, routing to the tier, cancelling a running
job (its pool child freed, or killed), time limits and a team's task module. The rest of a
job's life (progress, retries and backoff, failures, delays, cancelling before running, skips,
completion callbacks) is tested in process in tests/fast/test_lifecycle.py."""

import uuid
from datetime import datetime

import httpx
import pytest

from tests.support.processes import TERMINAL, Platform, wait_for_job

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
    # The revoke is a broadcast the worker reads between its own polls: 10 s was too short
    # for a loaded 2-core machine (the job still sleeps 30 s, so a late kill still shows).
    worker.wait_for_log("Terminating", timeout=20)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "cancelled"
    assert final["progress"]["current"] < 30


def test_soft_time_limit_fails_the_job(client: httpx.Client) -> None:
    job = submit(client, task="demo.sleep", args={"seconds": 20}, timeout_seconds=1)
    done = wait_for_job(client, job["id"], TERMINAL, timeout=20)
    assert done["state"] == "failed"
    assert done["error"]["type"] == "TimeLimitExceeded"


def test_team_task_module_runs(client: httpx.Client, platform: Platform) -> None:
    key = f"count-{uuid.uuid4()}"
    job = submit(client, task="tests.count", args={"key": key, "redis_url": platform.redis_url})
    done = wait_for_job(client, job["id"], TERMINAL)
    assert done["result"] == {"executions": 1, "attempt": 1}
    assert done["queue"] == "high"


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
