"""/v1/dead-letters in process: listing, replay and purge of jobs that ran out of retries,
with `JobRunner` making the dead letters and running the replays."""

import json
import uuid
from typing import Any

import httpx
import pytest
import redis

from tests.fast.harness import KEYS, InProcessWorker, problem
from tests.support.receiver import Receiver

DAY = 24 * 3600


async def dead_letter(
    client: httpx.AsyncClient, worker: InProcessWorker, **args: object
) -> dict[str, Any]:
    """A demo.fail job with no retries, run once: it is dead-lettered at its first failure.
    A `callback_url` goes into the submission, the rest into the task's arguments."""
    callback = {"callback_url": args.pop("callback_url")} if "callback_url" in args else {}
    body = {
        "task": "demo.fail",
        "args": {"mode": "retryable", **args},
        "max_retries": 0,
        **callback,
    }
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert worker.run_next("default").job_id == job["id"]
    return job


async def listed(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/dead-letters")
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


def run_all(worker: InProcessWorker, queue: str) -> list[str]:
    """Run every message of `queue` (and those the runs enqueue); their tasks in order."""
    tasks = []
    while worker.queued(queue):
        tasks.append(worker.run_next(queue).headers["task"])
    return tasks


async def test_a_dead_letter_is_listed_then_replayed_as_the_same_job(
    client: httpx.AsyncClient, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    job = await dead_letter(client, worker, succeed_on_attempt=2)
    assert await listed(client) == [job["id"]]
    dead = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert (dead["state"], dead["attempts"]) == ("failed", 1)
    assert dead["dead_lettered_at"] is not None

    replayed = await client.post(f"/v1/dead-letters/{job['id']}/replay")
    assert replayed.status_code == 200, replayed.text
    again = replayed.json()
    assert (again["id"], again["state"], again["attempts"], again["deaths"]) == (
        job["id"], "queued", 1, 0,
    )  # fmt: skip
    assert again["error"] is None
    assert again["finished_at"] is None
    assert again["dead_lettered_at"] is None
    assert redis_client.ttl(KEYS.job(job["id"])) == -1, "a replayed job waits without expiring"
    assert await listed(client) == []
    problem(await client.post(f"/v1/dead-letters/{job['id']}/replay"), 404)

    run_all(worker, "default")
    done = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert (done["state"], done["attempts"]) == ("succeeded", 2)
    assert done["result"] == {"succeeded_on_attempt": 2}
    assert 7 * DAY - 60 < redis_client.ttl(KEYS.job(job["id"])) <= 7 * DAY


async def test_replay_and_purge_every_dead_letter(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    jobs = [await dead_letter(client, worker) for _ in range(3)]
    ids = {job["id"] for job in jobs}
    assert set(await listed(client)) == ids

    assert (await client.post("/v1/dead-letters/replay")).json() == {"count": 3}
    assert await listed(client) == []
    assert {m.job_id for m in worker.queued("default")} == ids
    assert run_all(worker, "default") == ["demo.fail"] * 3  # and each fails again
    assert set(await listed(client)) == ids

    assert (await client.request("DELETE", "/v1/dead-letters")).json() == {"count": 3}
    assert await listed(client) == []
    for job in jobs:  # readable until the retention ends, but not replayable
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["state"] == "failed"
    assert (await client.post("/v1/dead-letters/replay")).json() == {"count": 0}
    assert worker.queued("default") == []


async def test_purge_one_dead_letter(client: httpx.AsyncClient, worker: InProcessWorker) -> None:
    kept, purged = await dead_letter(client, worker), await dead_letter(client, worker)
    response = await client.request("DELETE", f"/v1/dead-letters/{purged['id']}")
    assert response.json() == {"count": 1}
    assert await listed(client) == [kept["id"]]
    problem(await client.request("DELETE", f"/v1/dead-letters/{purged['id']}"), 404)
    problem(await client.post(f"/v1/dead-letters/{purged['id']}/replay"), 404)
    assert (await client.get(f"/v1/jobs/{purged['id']}")).json()["state"] == "failed"


@pytest.mark.parametrize(
    "job_id", [str(uuid.uuid4()), "not-a-uuid", "a" * 300], ids=["unknown", "not a uuid", "long"]
)
async def test_unknown_dead_letters_are_404(client: httpx.AsyncClient, job_id: str) -> None:
    body = problem(await client.post(f"/v1/dead-letters/{job_id}/replay"), 404)
    assert body["type"] == "urn:conveyor:problem:job-not-found"
    problem(await client.request("DELETE", f"/v1/dead-letters/{job_id}"), 404)


async def test_a_job_that_is_not_dead_is_not_replayed(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    job = (await client.post("/v1/jobs", json={"task": "demo.echo"})).json()
    problem(await client.post(f"/v1/dead-letters/{job['id']}/replay"), 404)
    assert [m.job_id for m in worker.queued("default")] == [job["id"]], "not enqueued twice"


async def test_a_replayed_jobs_callback_is_a_new_delivery(
    client: httpx.AsyncClient, worker: InProcessWorker, hook: Receiver
) -> None:
    job = await dead_letter(client, worker, succeed_on_attempt=2, callback_url=hook.url)
    assert run_all(worker, "default") == ["webhook.deliver"]
    (await client.post(f"/v1/dead-letters/{job['id']}/replay")).raise_for_status()
    assert run_all(worker, "default") == ["demo.fail", "webhook.deliver"]
    payloads = [json.loads(request.body) for request in hook.requests]
    assert [(p["id"], p["state"]) for p in payloads] == [
        (job["id"], "failed"),
        (job["id"], "succeeded"),
    ]
    assert payloads[0]["dead_lettered_at"] is not None
    assert payloads[1]["result"] == {"succeeded_on_attempt": 2}
