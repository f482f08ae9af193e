"""Delayed jobs survive a restart of every component; a soak under random worker deaths,
pauses past the lease and Redis restarts."""

import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import pytest
import redis as redis_lib

from tests.reliability.conftest import FAST, record_figure
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY
from tests.support.processes import (
    TERMINAL,
    Platform,
    Service,
    conveyor_argv,
    start_redis,
    wait_until,
)

pytestmark = pytest.mark.slow

DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction")


def ts(value: object) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


def test_delayed_jobs_run_once_on_time_across_a_full_restart(log_dir: Path, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", *DURABLE)
    platform = Platform(server, 0, log_dir, **FAST,
                        CONVEYOR_WORKER__HEARTBEAT_FILE=str(tmp_path / "hb"))  # fmt: skip
    try:
        platform.start_api()
        platform.start_worker("default")
        with platform.http() as client:
            ids = [
                client.post("/v1/jobs", json={
                    "task": "tests.work", "args": {"redis_url": platform.redis_url},
                    "delay_seconds": delay}).json()["id"]
                for delay in (8, 9, 10, 11, 12)
            ]  # fmt: skip
        platform.stop()  # API and worker down...
        server.process.terminate()  # ...and Redis too
        server.process.wait(10)
        server = start_redis(server.data_dir, *DURABLE, port=server.port)
        platform.start_api()
        platform.start_worker("default")
        # On a loaded machine the restart can outlast the first delays: a job due while no
        # worker was up is on time if it starts promptly once one is (it failed a run with
        # the worker ready 2 s after the first job's due time).
        worker_ready = time.time()
        with platform.http() as client:

            def all_done() -> list[dict] | None:
                jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
                return jobs if all(j["state"] in TERMINAL for j in jobs) else None

            jobs = wait_until(all_done, 40, "every delayed job to finish", step=0.2)
        executions = platform.redis.hgetall("executions")
    finally:
        platform.stop()
        server.process.kill()
        server.process.wait()
    early = [ts(j["started_at"]) - ts(j["scheduled_for"]) for j in jobs]
    assert all(late >= -0.01 for late in early), f"started before they were due: {early}"
    lateness = [ts(j["started_at"]) - max(ts(j["scheduled_for"]), worker_ready) for j in jobs]
    record_figure("delayed_job_lateness_after_restart",
                  min=round(min(lateness), 3), max=round(max(lateness), 3))  # fmt: skip
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert all(late <= 2.0 for late in lateness), lateness
    assert executions == dict.fromkeys(ids, "1")


class Chaos(threading.Thread):
    """Every few seconds one fault: SIGKILL a worker (with its children) or SIGTERM it, and
    restart it; pause a whole worker, or its main process only, past the lease; or restart
    Redis (AOF on: a restart loses nothing)."""

    KINDS = ("kill", "term", "pause", "pause-main", "redis")

    def __init__(self, platform: Platform, workers: list[tuple[str, Service]], seed: int,
                 redis: Callable[[], None], lease: float,
                 weights: tuple[int, ...] = (4, 4, 1, 1, 1),
                 interval: tuple[float, float] = (1.0, 2.5)) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.weights = weights
        self.interval = interval  # seconds between one fault's end and the next, at random
        self.platform = platform
        self.workers = workers
        self.random = random.Random(seed)
        self.restart_redis = redis
        self.lease = lease
        self.stop_event = threading.Event()
        self.faults = dict.fromkeys(self.KINDS, 0)
        self.error: BaseException | None = None

    @property
    def kills(self) -> int:
        return self.faults["kill"]

    def run(self) -> None:
        import os

        try:
            while not self.stop_event.wait(self.random.uniform(*self.interval)):
                kind = self.random.choices(self.KINDS, weights=self.weights)[0]
                self.faults[kind] += 1
                index = self.random.randrange(len(self.workers))
                queue, victim = self.workers[index]
                if kind == "redis":
                    self.restart_redis()
                    continue
                if kind.startswith("pause"):
                    if kind == "pause":
                        os.killpg(victim.pid, signal.SIGSTOP)
                    else:
                        victim.signal(signal.SIGSTOP)
                    self.stop_event.wait(self.lease + 1.5)
                    os.killpg(victim.pid, signal.SIGCONT)
                    continue
                if kind == "kill":
                    os.killpg(victim.pid, signal.SIGKILL)
                else:
                    victim.signal(signal.SIGTERM)
                victim.stop(timeout=15)
                # Restart without waiting for it to be ready: faults keep coming meanwhile.
                argv = conveyor_argv("worker", "--queue", queue)
                self.workers[index] = (queue, self.platform.start(f"worker-{queue}", argv))
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.mark.timeout(900)
def test_soak_5000_jobs_with_random_worker_deaths_pauses_and_redis_restarts(
    log_dir: Path, tmp_path: Path
) -> None:
    """With fair share and limits on: three tenants share the tiers, each limited to one
    running job per tier (two workers of two children per tier: the limit binds)."""
    total, escapes = 5000, 100
    server = start_redis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    platform = Platform(server, 0, log_dir,
                        **{**FAST, "CONVEYOR_WORKER__CONCURRENCY": "2",
                           "CONVEYOR_FLOW__TENANT_CONCURRENCY_PER_TIER": "1"},
                        CONVEYOR_WORKER__HEARTBEAT_FILE=str(tmp_path / "hb"))  # fmt: skip
    lock = threading.Lock()

    def restart_redis() -> None:
        nonlocal server
        with lock:
            server.process.terminate()
            server.process.wait(10)
            server = start_redis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync",
                                 "always", port=server.port)  # fmt: skip

    chaos: Chaos | None = None
    try:
        platform.start_api()
        workers = [(q, platform.start_worker(q)) for q in ("high", "default", "low") for _ in "ab"]
        lease = float(FAST["CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS"])
        chaos = Chaos(platform, workers, seed=20261127, redis=restart_redis, lease=lease)
        started = time.monotonic()
        chaos.start()
        ids: list[str] = []
        escaped: set[str] = set()
        with platform.http() as admin, platform.http(TEAM_A_KEY) as team_a, \
                platform.http(TEAM_B_KEY) as team_b:  # fmt: skip
            for n in range(total):
                client = (admin, team_a, team_b)[(n // 3) % 3]  # each on every tier
                body: dict[str, object] = {
                    "task": "tests.work",
                    "args": {"redis_url": platform.redis_url, "seconds": 0.05},
                    "priority": ("high", "default", "low")[n % 3],
                }
                if n % (total // escapes) == 0:  # runs that leave their body oddly
                    body = {"task": "tests.escape", "args": {"mode": ("cancelled", "base")[n % 2]}}
                job = _submit_through_faults(client, body, key=f"soak-{n}")
                ids.append(job)
                if body["task"] == "tests.escape":
                    escaped.add(job)

            def terminal_count() -> int:
                try:
                    return sum(platform.redis.zcard(f"conveyor:index:state:{s}") for s in TERMINAL)
                except redis_lib.RedisError:  # Redis restarting under the chaos
                    return 0

            try:
                wait_until(lambda: terminal_count() >= total, 400, "every job to finish", step=1)
            finally:
                chaos.stop_event.set()
                chaos.join(30)
        elapsed = time.monotonic() - started

        # Every slot a claim took is released: by acks, and by the restores of the deliveries
        # of killed or paused workers once their leases lapse (no beat sweep runs here).
        def slots_released() -> bool:
            try:
                return platform.redis.hlen("conveyor:slots") == 0
            except redis_lib.RedisError:
                return False

        wait_until(slots_released, 3 * lease + 10, "every flow-control slot released", step=0.5)
        states: dict[str, int] = {}
        for state in ("queued", "scheduled", "running", "retrying", *TERMINAL):
            states[state] = platform.redis.zcard(f"conveyor:index:state:{state}")
        executions = {k: int(v) for k, v in platform.redis.hgetall("executions").items()}
        records = {i: platform.redis.hgetall(f"conveyor:job:{i}") for i in ids}
    finally:
        if chaos is not None:
            chaos.stop_event.set()
        platform.stop()
        server.process.terminate()
        server.process.wait(10)
    rerun = [k for k, n in executions.items() if n > 1]
    duplicates = sum(n - 1 for n in executions.values() if n > 1)
    worked = [i for i in ids if i not in escaped]
    never_ran = [i for i in worked if i not in executions]
    record_figure("soak", jobs=total, seconds=round(elapsed, 1), faults=chaos.faults,
                  lost=len(worked) - states["succeeded"], duplicate_executions=duplicates,
                  states=states)  # fmt: skip
    assert chaos.error is None, chaos.error
    assert sum(chaos.faults.values()) >= 10, "the soak must actually inject faults"
    assert chaos.faults["redis"] >= 1
    assert chaos.faults["pause"] + chaos.faults["pause-main"] >= 1
    # lost = 0, stuck = 0: every job terminal, every plain one succeeded, every odd one failed.
    failed = {i: records[i].get("error") for i in worked if records[i].get("state") != "succeeded"}
    assert states["succeeded"] == len(worked), (states, dict(list(failed.items())[:5]))
    assert states["failed"] == len(escaped), states
    assert never_ran == []

    # Every recorded outcome is the latest attempt's.
    def outcome_attempt(i: str) -> int:
        return int(orjson.loads(records[i]["result"])["attempt"])

    stale = [i for i in worked if outcome_attempt(i) != int(records[i]["attempts"])]
    assert stale == []

    # Every re-execution has a recorded cause: a worker died (or paused past its lease)
    # under the job, the sweep repaired an abandoned run, or the task asked for a retry (its
    # own Redis calls failed while Redis restarted).
    def causes(i: str) -> int:
        return sum(int(records[i].get(cause) or 0) for cause in ("deaths", "repairs", "retries"))

    unexplained = {k: (executions[k], causes(k)) for k in rerun if causes(k) < executions[k] - 1}
    assert unexplained == {}


def _submit_through_faults(client: httpx.Client, body: dict[str, object], key: str) -> str:
    """Submit, retrying 503s and connection errors with the same idempotency key (as the
    client library does): a retry never duplicates the job."""
    headers = {"Idempotency-Key": key}

    def attempt() -> str | None:
        try:
            response = client.post("/v1/jobs", json=body, headers=headers)
        except httpx.TransportError:
            return None
        if response.status_code in (200, 202):
            job_id: str = response.json()["id"]
            return job_id
        assert response.status_code == 503, response.text
        return None

    result: str = wait_until(attempt, 60, f"submission {key} to be accepted", step=0.2)
    return result
