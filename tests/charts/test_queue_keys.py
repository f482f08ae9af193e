"""The Redis keys KEDA counts are exactly the keys a running worker consumes."""

from pathlib import Path

import pytest

from conveyor.core.queues import Queue
from tests.charts.render import of_kind, render
from tests.conftest import fresh_db
from tests.support.processes import TERMINAL, Platform, RedisServer, wait_for_job, wait_until

pytestmark = pytest.mark.slow


def test_scaled_object_list_names_are_the_consumed_queues(
    redis_server: RedisServer, log_dir: Path
) -> None:
    triggers = {
        so["metadata"]["labels"]["app.kubernetes.io/component"].removeprefix("worker-"):
            so["spec"]["triggers"][0]["metadata"]["listName"]
        for so in of_kind(render("default"), "ScaledObject")
    }  # fmt: skip
    assert set(triggers) == {str(q) for q in Queue}
    platform = Platform(redis_server, fresh_db(redis_server), log_dir)
    try:
        platform.start_api()
        with platform.http() as client:
            jobs = {q: client.post("/v1/jobs", json={"task": "demo.echo", "priority": q}).json()
                    for q in triggers}  # fmt: skip
            # Waiting messages sit exactly under the key KEDA counts...
            for queue, key in triggers.items():
                assert platform.redis.llen(key) == 1, (queue, key)
            # ...and the worker of each tier takes them from that key.
            for queue, key in triggers.items():
                platform.start_worker(queue)
                assert wait_for_job(client, jobs[queue]["id"], TERMINAL)["state"] == "succeeded"
                wait_until(lambda key=key: platform.redis.llen(key) == 0, 10, f"{key} to drain")
    finally:
        platform.stop()
