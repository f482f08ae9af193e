"""GET /v1/jobs/{id}/events in process, for jobs `JobRunner` has run: the snapshot of a
finished job, and resumption with Last-Event-ID (exactly the missed events, in order)."""

import json
from typing import Any

import httpx
import redis

from tests.fast.harness import KEYS, InProcessWorker, problem, sse_events


async def finished_job(client: httpx.AsyncClient, worker: InProcessWorker) -> dict[str, Any]:
    """A fast.steps job of two steps, run to success: running, two progress reports, done."""
    job: dict[str, Any] = (
        await client.post("/v1/jobs", json={"task": "fast.steps", "args": {"steps": 2}})
    ).json()
    worker.run_next("default")
    return job


async def events(
    client: httpx.AsyncClient, job_id: str, last_event_id: str | None = None
) -> list[dict[str, str]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    response = await client.get(f"/v1/jobs/{job_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return list(sse_events(response.text))


async def test_a_finished_job_streams_itself_once_and_ends(
    client: httpx.AsyncClient, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    job = await finished_job(client, worker)
    stored = [entry_id for entry_id, _ in redis_client.xrange(KEYS.events(job["id"]))]
    (only,) = await events(client, job["id"])
    assert (only["event"], only["id"]) == ("job", stored[-1])
    final = json.loads(only["data"])
    assert (final["id"], final["state"], final["result"]) == (job["id"], "succeeded", {"steps": 2})


async def test_resuming_after_each_event_sends_exactly_the_rest(
    client: httpx.AsyncClient, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    job = await finished_job(client, worker)
    entries = redis_client.xrange(KEYS.events(job["id"]))
    stored = [entry_id for entry_id, _ in entries]
    assert [fields["state"] for _, fields in entries][-4:] == [
        "running", "running", "running", "succeeded",
    ]  # fmt: skip
    for index, last in enumerate(stored[:-1]):
        resumed = await events(client, job["id"], last_event_id=last)
        assert [e["id"] for e in resumed] == stored[index + 1 :], last
        assert [e["event"] for e in resumed][-1] == "job"
        assert json.loads(resumed[-1]["data"])["state"] == "succeeded"
        for event in resumed[:-1]:
            change = json.loads(event["data"])
            assert event["event"] in ("state", "progress")
            assert set(change) == {"state", "attempts", "progress"}
    progress = [
        json.loads(e["data"])["progress"]
        for e in await events(client, job["id"], last_event_id=stored[0])
        if e["event"] == "progress"
    ]
    assert [p["current"] for p in progress] == [1.0, 2.0]
    # Resuming after the last event ends at once with the finished job.
    (final,) = await events(client, job["id"], last_event_id=stored[-1])
    assert (final["event"], final["id"]) == ("job", stored[-1])


async def test_a_malformed_last_event_id_is_refused(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    job = await finished_job(client, worker)
    response = await client.get(
        f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "not-an-id"}
    )
    problem(response, 422)


async def test_an_event_id_past_what_redis_takes_is_refused_before_the_stream(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    """Schema-valid but past 2^64 - 1: Redis refused it mid-stream (a traceback in the log)."""
    job = await finished_job(client, worker)
    for event_id in (f"{2**64}-0", f"1-{2**64}", "99999999999999999999-1", f"{2**64 - 1}-1"):
        response = await client.get(
            f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": event_id}
        )
        problem(response, 422)
    largest = await client.get(
        f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": f"{2**64 - 2}-{2**64 - 2}"}
    )
    assert largest.status_code == 200
