"""Delayed jobs survive a restart of every component; a soak under random worker deaths."""

import random
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.reliability.conftest import FAST, record_figure
from tests.support.processes import (
    TERMINAL,
    Platform,
    RedisServer,
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
    lateness = [ts(j["started_at"]) - ts(j["scheduled_for"]) for j in jobs]
    record_figure("delayed_job_lateness_after_restart",
                  min=round(min(lateness), 3), max=round(max(lateness), 3))  # fmt: skip
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert all(-0.01 <= late <= 2.0 for late in lateness), lateness
    assert executions == dict.fromkeys(ids, "1")


class Chaos(threading.Thread):
    """Every few seconds, SIGKILL (with its children) or SIGTERM a random worker, restart it."""

    def __init__(self, platform: Platform, workers: list[tuple[str, Service]], seed: int) -> None:
        super().__init__(daemon=True)
        self.platform = platform
        self.workers = workers
        self.random = random.Random(seed)
        self.stop_event = threading.Event()
        self.kills = 0
        self.terms = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.random.uniform(1.0, 2.5)):
                index = self.random.randrange(len(self.workers))
                queue, victim = self.workers[index]
                if self.random.random() < 0.5:
                    self.kills += 1
                    import os

                    os.killpg(victim.pid, signal.SIGKILL)
                else:
                    self.terms += 1
                    victim.signal(signal.SIGTERM)
                victim.stop(timeout=15)
                # Restart without waiting for it to be ready: faults keep coming meanwhile.
                argv = conveyor_argv("worker", "--queue", queue)
                self.workers[index] = (queue, self.platform.start(f"worker-{queue}", argv))
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.mark.timeout(600)
def test_soak_5000_jobs_with_random_worker_deaths(
    redis_server: RedisServer, log_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import fresh_db

    total = 5000
    platform = Platform(redis_server, fresh_db(redis_server), log_dir,
                        **{**FAST, "CONVEYOR_WORKER__CONCURRENCY": "2"},
                        CONVEYOR_WORKER__HEARTBEAT_FILE=str(tmp_path / "hb"))  # fmt: skip
    chaos: Chaos | None = None
    try:
        platform.start_api()
        workers = [(q, platform.start_worker(q)) for q in ("high", "default", "low") for _ in "ab"]
        chaos = Chaos(platform, workers, seed=20261121)
        started = time.monotonic()
        chaos.start()
        ids: list[str] = []
        with platform.http() as client:
            for n in range(total):
                response = client.post("/v1/jobs", json={
                    "task": "tests.work",
                    "args": {"redis_url": platform.redis_url, "seconds": 0.05},
                    "priority": ("high", "default", "low")[n % 3]})  # fmt: skip
                assert response.status_code == 202
                ids.append(response.json()["id"])

            def terminal_count() -> int:
                return sum(platform.redis.zcard(f"conveyor:index:state:{s}") for s in TERMINAL)

            try:
                wait_until(lambda: terminal_count() >= total, 300, "every job to finish", step=1)
            finally:
                chaos.stop_event.set()
                chaos.join(30)
        elapsed = time.monotonic() - started
        states: dict[str, int] = {}
        for state in ("queued", "scheduled", "running", "retrying", *TERMINAL):
            states[state] = platform.redis.zcard(f"conveyor:index:state:{state}")
        executions = {k: int(v) for k, v in platform.redis.hgetall("executions").items()}
        rerun = [k for k, n in executions.items() if n > 1]
        deaths = {k: int(platform.redis.hget(f"conveyor:job:{k}", "deaths") or 0) for k in rerun}
    finally:
        if chaos is not None:
            chaos.stop_event.set()
        platform.stop()
    duplicates = sum(n - 1 for n in executions.values() if n > 1)
    never_ran = [i for i in ids if i not in executions]
    record_figure("soak", jobs=total, seconds=round(elapsed, 1), sigkills=chaos.kills,
                  sigterms=chaos.terms, lost=total - states["succeeded"],
                  duplicate_executions=duplicates, states=states)  # fmt: skip
    assert chaos.error is None, chaos.error
    assert chaos.kills + chaos.terms >= 10, "the soak must actually inject faults"
    assert states["succeeded"] == total, states
    assert never_ran == []
    # Every re-execution is explained by a worker that died under the job (none by SIGTERM,
    # a lease expiry or a lost ack), and a SIGKILL can only catch one job per child.
    unexplained = {k: (executions[k], deaths[k]) for k in rerun if deaths[k] < executions[k] - 1}
    assert unexplained == {}
    assert duplicates <= chaos.kills * 2, (duplicates, chaos.kills)
