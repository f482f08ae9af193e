"""Time bounds a tenant cannot stretch (issue 19, item 5): a task declares the longest time
limit a submission may ask for, the API refuses more, and every message carries a limit
within it."""

import httpx
import pytest

from conveyor.core.catalog import JobContext, TaskArgs, TaskSpec, task
from conveyor.core.queues import Queue
from conveyor.core.settings import WorkerSettings
from conveyor.jobstore.submission import time_limits
from tests.fast.harness import CATALOG, InProcessWorker, problem

HOOK = {"task": "webhook.deliver", "args": {"url": "https://example.com/hook", "payload": 1}}


@pytest.mark.parametrize(("task", "limit"), [("webhook.deliver", 60), ("email.send", 300)])
async def test_a_submission_cannot_ask_for_more_than_its_tasks_maximum(
    client: httpx.AsyncClient, task: str, limit: int
) -> None:
    args = HOOK["args"] if task == "webhook.deliver" else {"to": ["a@example.com"],
                                                          "subject": "s", "text": "t"}  # fmt: skip
    refused = await client.post(
        "/v1/jobs", json={"task": task, "args": args, "timeout_seconds": limit + 1}
    )
    body = problem(refused, 422)
    assert [e["pointer"] for e in body["errors"]] == ["#/timeout_seconds"]
    assert str(limit) in body["errors"][0]["detail"]
    accepted = await client.post(
        "/v1/jobs", json={"task": task, "args": args, "timeout_seconds": limit}
    )
    assert accepted.status_code == 202, accepted.text
    catalogue = {t["name"]: t for t in (await client.get("/v1/tasks")).json()}
    assert catalogue[task]["max_timeout_seconds"] == limit
    assert catalogue["demo.echo"]["max_timeout_seconds"] is None


async def test_a_webhook_message_carries_the_tasks_own_limit_not_the_workers_default(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    assert (await client.post("/v1/jobs", json=HOOK)).status_code == 202
    message = worker.take("default")
    hard, soft = message.headers["timelimit"]
    assert soft == 30  # webhook.deliver's default; the worker default is 300
    assert hard == soft + worker.settings.worker.hard_timeout_grace_seconds


class _Args(TaskArgs):
    pass


def test_time_limits_never_exceed_the_tasks_maximum() -> None:
    def fn(ctx: JobContext, args: _Args) -> None: ...

    capped = TaskSpec("bounded", Queue.LOW, _Args, fn, max_timeout_seconds=20)
    worker = WorkerSettings(default_timeout_seconds=300, hard_timeout_grace_seconds=5)
    assert time_limits(capped, None, worker) == (20, 25)  # the default is capped too
    assert time_limits(capped, 10, worker) == (10, 15)
    assert time_limits(capped, 3600, worker) == (20, 25)  # a message from elsewhere: capped
    assert time_limits(CATALOG["demo.echo"], None, worker) == (300, 305)
    with pytest.raises(TypeError, match="exceeds max_timeout_seconds"):
        task(name="x", queue=Queue.LOW, args=_Args, timeout_seconds=30, max_timeout_seconds=20)
