"""Flower (from PyPI) attached to the broker sees the workers of all three tiers and, from
their task events, the tasks they ran."""

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import started_platform
from tests.support.processes import (
    TERMINAL,
    Platform,
    RedisServer,
    free_port,
    wait_for_job,
    wait_until,
)


@pytest.fixture(scope="module")
def evented(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    platform = started_platform(redis_server, module_logs, CONVEYOR_WORKER__SEND_TASK_EVENTS="true")
    yield platform
    platform.stop()


def test_flower_lists_every_tier_and_their_tasks(evented: Platform) -> None:
    celery = shutil.which("celery", path=str(Path(sys.executable).parent))
    assert celery, "flower is a dev dependency"
    port = free_port()
    evented.start(
        "flower",
        [celery, "-b", evented.redis_url, "flower", f"--port={port}", "--address=127.0.0.1"],
        FLOWER_BASIC_AUTH="ops:s3cret",
    )
    base = f"http://127.0.0.1:{port}"
    auth = ("ops", "s3cret")

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 30, "Flower to start", step=0.2)
    assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401  # behind auth

    def tiers() -> set[str]:
        workers = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, auth=auth, timeout=20)
        return {name.split(".", 1)[0] for name in workers.json()} if workers.is_success else set()

    wait_until(
        lambda: tiers() == {"high", "default", "low"}, 60, "Flower to see three tiers", step=1
    )

    with evented.http() as client:
        ids = {
            queue: client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": queue},
                                                 "priority": queue}).json()["id"]
            for queue in ("high", "default", "low")
        }  # fmt: skip
        for job_id in ids.values():
            wait_for_job(client, job_id, TERMINAL)

    def seen() -> dict[str, dict]:
        tasks = httpx.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
        return {job_id: tasks[job_id] for job_id in ids.values() if job_id in tasks}

    tasks = wait_until(lambda: len(seen()) == 3 and seen(), 30, "Flower to see the tasks", step=0.5)
    for queue, job_id in ids.items():
        assert tasks[job_id]["name"] == "demo.echo"
        assert tasks[job_id]["state"] == "SUCCESS"
        assert tasks[job_id]["worker"].startswith(f"{queue}.")
