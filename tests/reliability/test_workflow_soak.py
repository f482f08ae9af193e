"""Workflows under faults (issue 20): random DAGs of 1-50 steps on three tiers while random
workers are SIGKILLed, SIGTERMed or paused past their lease. Every workflow ends; no step is
lost or left waiting with its parents all succeeded; every fan-in step receives all its
parents' results; and every step runs exactly once unless a recorded cause (a worker death
under it, a repair, a retry) explains the re-run.

`--workflow-soak` sets how many workflows (the CI run's default keeps the suite short; the
figures in docs/workflows.md are from 1,000).
"""

import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib

from tests.reliability.conftest import FAST, record_figure
from tests.reliability.test_delayed_and_soak import Chaos
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY
from tests.support.processes import Platform, start_redis, wait_until

pytestmark = pytest.mark.slow

TIERS = ("high", "default", "low")


def random_workflow(rng: random.Random, redis_url: str, n: int) -> dict[str, Any]:
    """A random DAG: each step after the first depends on up to three earlier ones (or none,
    a new root); a step with parents is a fan-in taking all their results.
    """
    size = rng.randint(1, 50)
    steps: list[dict[str, Any]] = []
    for i in range(size):
        parents = sorted(rng.sample(range(i), k=min(i, rng.choice((0, 1, 1, 2, 3))))) if i else []
        step: dict[str, Any] = {"name": f"s{i}", "priority": rng.choice(TIERS)}
        if parents:
            step |= {"task": "tests.join", "depends_on": [f"s{p}" for p in parents],
                     "inputs": {"parents": "*"},
                     "args": {"redis_url": redis_url, "expected": len(parents)}}  # fmt: skip
        else:
            step |= {"task": "tests.work", "args": {"redis_url": redis_url, "seconds": 0.03}}
        steps.append(step)
    policy = "continue" if n % 2 else "fail_fast"
    return {"name": f"soak-{n}", "failure_policy": policy, "steps": steps}


@pytest.mark.timeout(1800)
def test_workflow_soak_with_random_worker_deaths_and_pauses(
    log_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    total = int(request.config.getoption("--workflow-soak"))
    server = start_redis(tmp_path / "redis")
    platform = Platform(server, 0, log_dir,
                        **{**FAST, "CONVEYOR_WORKER__CONCURRENCY": "2"},
                        CONVEYOR_WORKER__HEARTBEAT_FILE=str(tmp_path / "hb"))  # fmt: skip
    rng = random.Random(20261128)
    chaos: Chaos | None = None
    try:
        platform.start_api()
        workers = [(q, platform.start_worker(q)) for q in TIERS for _ in "ab"]
        lease = float(FAST["CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS"])
        # Faults come faster than in the job soak: the 200 workflows of a CI run finish in
        # about 20 s, in which the job soak's pace gave 3 to 6 faults.
        chaos = Chaos(platform, workers, seed=20261129, redis=lambda: None, lease=lease,
                      weights=(4, 4, 1, 1, 0), interval=(0.3, 1.0))  # fmt: skip
        started = time.monotonic()
        chaos.start()
        ids: list[str] = []
        with platform.http() as admin, platform.http(TEAM_A_KEY) as team_a, \
                platform.http(TEAM_B_KEY) as team_b:  # fmt: skip
            for n in range(total):
                client = (admin, team_a, team_b)[n % 3]
                body = random_workflow(rng, platform.redis_url, n)
                ids.append(_submit(client, body, key=f"wf-soak-{n}"))

            def running() -> int:
                try:
                    with platform.redis.pipeline(transaction=False) as pipe:
                        for wf in ids:
                            pipe.hget(f"conveyor:workflow:{wf}", "state")
                        return sum(s == "running" for s in pipe.execute())
                except redis_lib.RedisError:
                    return len(ids)

            try:
                wait_until(lambda: running() == 0, 1500, "every workflow to end", step=2)
            finally:
                chaos.stop_event.set()
                chaos.join(30)
        elapsed = time.monotonic() - started
        workflows = {wf: platform.redis.hgetall(f"conveyor:workflow:{wf}") for wf in ids}
        steps: dict[str, dict[str, str]] = {}
        for workflow in workflows.values():
            for job_id in _order(workflow):
                steps[job_id] = platform.redis.hgetall(f"conveyor:job:{job_id}")
        executions = {k: int(v) for k, v in platform.redis.hgetall("executions").items()}
    finally:
        if chaos is not None:
            chaos.stop_event.set()
        platform.stop()
        server.process.terminate()
        server.process.wait(10)

    outcomes: dict[str, int] = {}
    for workflow in workflows.values():
        outcomes[workflow["state"]] = outcomes.get(workflow["state"], 0) + 1
    step_states: dict[str, int] = {}
    for record in steps.values():
        step_states[record["state"]] = step_states.get(record["state"], 0) + 1
    duplicates = sum(n - 1 for n in executions.values() if n > 1)
    record_figure("workflow_soak", workflows=total, steps=len(steps), seconds=round(elapsed, 1),
                  faults=chaos.faults, outcomes=outcomes, step_states=step_states,
                  duplicate_executions=duplicates)  # fmt: skip
    assert chaos.error is None, chaos.error
    assert sum(chaos.faults.values()) >= 5, "the soak must actually inject faults"
    assert chaos.faults["kill"] >= 1
    assert chaos.faults["pause"] + chaos.faults["pause-main"] >= 1
    # Every workflow ended and succeeded: no step failed (each fan-in received every parent's
    # result, or it would have failed), none was lost or skipped.
    assert outcomes == {"succeeded": total}, (outcomes, step_states)
    assert step_states == {"succeeded": len(steps)}
    assert sum(int(w["steps"]) for w in workflows.values()) == len(steps)
    never_ran = [job for job in steps if job not in executions]
    assert never_ran == []

    # Every step ran after all its parents finished, and each re-run is explained.
    for job_id, record in steps.items():
        for parent in _parents(record):
            assert float(steps[parent]["finished_at"]) <= float(record["started_at"]), job_id

    def causes(job_id: str) -> int:
        record = steps[job_id]
        return sum(int(record.get(cause) or 0) for cause in ("deaths", "repairs", "retries"))

    unexplained = {k: (n, causes(k)) for k, n in executions.items()
                   if n > 1 and causes(k) < n - 1}  # fmt: skip
    assert unexplained == {}


def _order(workflow: dict[str, str]) -> list[str]:
    import orjson

    order: list[str] = orjson.loads(workflow["order"])
    return order


def _parents(record: dict[str, str]) -> list[str]:
    import orjson

    parents: list[str] = orjson.loads(record.get("parents") or "[]")
    return parents


def _submit(client: httpx.Client, body: dict[str, Any], key: str) -> str:
    """Submit, retrying 429/503 and connection errors with the same idempotency key."""
    headers = {"Idempotency-Key": key}
    lock = threading.Lock()

    def attempt() -> str | None:
        with lock:
            try:
                response = client.post("/v1/workflows", json=body, headers=headers)
            except httpx.TransportError:
                return None
        if response.status_code in (200, 202):
            workflow_id: str = response.json()["id"]
            return workflow_id
        assert response.status_code in (429, 503), response.text
        return None

    result: str = wait_until(attempt, 120, f"workflow {key} to be accepted", step=0.2)
    return result
