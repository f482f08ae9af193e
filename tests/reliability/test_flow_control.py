"""Flow control with real workers: a concurrency key's limit holds across workers and
SIGKILLs, one tenant's long jobs no longer hold every slot of a tier, and a paused tier
starts nothing until resumed.
"""

import threading
import time
from datetime import datetime

import pytest

from tests.reliability.conftest import record_figure
from tests.reliability.test_worker_faults import kill_group, submit
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY
from tests.support.processes import TERMINAL, Platform, wait_for_job, wait_until
from tests.support.receiver import receiver

pytestmark = pytest.mark.slow


class AliveSampler:
    """Counts the `tests.keyed` runs of `label` alive in Redis every 20 ms, keeping the
    maximum and the runs seen at it."""

    def __init__(self, platform: Platform, label: str) -> None:
        self.redis = platform.redis
        self.label = label
        self.seen: list[str] = []
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "AliveSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            found = list(self.redis.scan_iter(f"alive:{self.label}:*", count=1000))
            if len(found) > self.most:
                self.seen = found
            self.most = max(self.most, len(found))
            self.samples += 1


@pytest.mark.timeout(240)
def test_a_concurrency_key_never_runs_more_than_its_limit_through_sigkills(
    fast_platform: Platform,
) -> None:
    """tests.keyed allows 3 runs per key. 3 workers x 4 children take 24 jobs of one key
    while two workers are SIGKILLed (and replaced): never 4 alive at once, all finish."""
    fast_platform.start_api()
    workers = [fast_platform.start_worker("default", CONVEYOR_WORKER__CONCURRENCY="4")
               for _ in range(3)]  # fmt: skip
    args = {"redis_url": fast_platform.redis_url, "seconds": 1.0, "label": "c7"}
    body = {"task": "tests.keyed", "concurrency_key": "customer-7", "args": args}
    with fast_platform.http(TEAM_A_KEY) as client, AliveSampler(fast_platform, "c7") as sampler:
        jobs = [submit(client, **body)["id"] for _ in range(24)]
        # A job of another key runs beside them (not counted).
        other_body = {**body, "concurrency_key": "customer-8",
                      "args": {**body["args"], "label": "c8"}}  # fmt: skip
        other = submit(client, **other_body)["id"]
        for victim in range(2):
            wait_until(lambda: sampler.most >= 3, 30, "three runs of the key at once")
            time.sleep(0.5)
            kill_group(workers[victim])
            workers.append(fast_platform.start_worker("default", CONVEYOR_WORKER__CONCURRENCY="4"))
        done = [wait_for_job(client, job, TERMINAL, timeout=120) for job in [*jobs, other]]
    executions = {k: int(v) for k, v in fast_platform.redis.hgetall("executions").items()}
    record_figure("concurrency_key_limit_under_sigkill", limit=3, jobs=len(jobs),
                  most_alive=sampler.most, samples=sampler.samples,
                  reruns=sum(n - 1 for n in executions.values()))  # fmt: skip
    assert {j["state"] for j in done} == {"succeeded"}
    assert sampler.samples > 100
    assert sampler.most == 3, f"{sampler.most} runs of one key alive at once: {sampler.seen}"
    assert fast_platform.redis.hlen("conveyor:slots") == 0, "every slot released"
    assert fast_platform.redis.hgetall("conveyor:gate:active") == {}


def started_at(job: dict) -> float:
    return datetime.fromisoformat(job["started_at"]).timestamp()


@pytest.mark.timeout(120)
def test_one_tenants_trickling_deliveries_no_longer_hold_every_slot(
    fast_platform: Platform,
) -> None:
    """The issue's starvation case: tenant A's two webhook deliveries to a receiver that
    trickles a byte every 2 s (each attempt may take 60 s) on a tier with two slots. With a
    tenant limit of 1 per tier, B's job runs at once while A's first delivery still trickles
    and its second still waits."""
    fast_platform.start_api()
    fast_platform.start_worker("default", CONVEYOR_WORKER__CONCURRENCY="2",
                               CONVEYOR_FLOW__TENANT_CONCURRENCY_PER_TIER="1")  # fmt: skip
    with receiver(trickle_seconds=2.0) as hook, fast_platform.http(TEAM_A_KEY) as a, \
            fast_platform.http(TEAM_B_KEY) as b:  # fmt: skip
        slow = {"task": "webhook.deliver", "args": {"url": hook.url, "payload": 1},
                "timeout_seconds": 60, "max_retries": 0}  # fmt: skip
        a_jobs = [submit(a, **slow)["id"] for _ in range(2)]
        wait_for_job(a, a_jobs[0], {"running"})
        submitted = time.time()
        b_job = submit(b, task="demo.echo", args={"payload": 1})["id"]
        b_done = wait_for_job(b, b_job, TERMINAL, timeout=30)
        a_states = [a.get(f"/v1/jobs/{job}").json()["state"] for job in a_jobs]
        for job in a_jobs:
            a.post(f"/v1/jobs/{job}/cancel", params={"terminate": "true"})
    record_figure("tenant_b_wait_behind_trickling_tenant_a",
                  seconds=round(started_at(b_done) - submitted, 3))  # fmt: skip
    assert b_done["state"] == "succeeded"
    assert a_states == ["running", "queued"], "B ran while A's deliveries were still there"


@pytest.mark.timeout(120)
def test_a_paused_tier_starts_nothing_and_loses_nothing(fast_platform: Platform) -> None:
    fast_platform.start_api()
    fast_platform.start_worker("default", CONVEYOR_WORKER__CONCURRENCY="2")
    with fast_platform.http() as admin:
        assert admin.put("/v1/admin/pauses/tier/default").status_code == 201
        jobs = [submit(admin, task="demo.echo", args={"payload": n})["id"] for n in range(20)]
        time.sleep(3)  # the worker polls, claims nothing
        states = {admin.get(f"/v1/jobs/{job}").json()["state"] for job in jobs}
        assert states == {"queued"}
        assert fast_platform.redis.llen("default") == 0, "every token parked, none polled"
        assert admin.delete("/v1/admin/pauses/tier/default").status_code == 204
        done = [wait_for_job(admin, job, TERMINAL, timeout=60) for job in jobs]
    assert {j["state"] for j in done} == {"succeeded"}
