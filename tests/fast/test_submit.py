"""The job API in process with no workers: validation, atomic accept, idempotency, cancel
before running, the catalogue and the probes (formerly tests/test_api.py, against a real API
process)."""

import base64
import json
import time
import uuid

import httpx
import pytest
import redis

from conveyor.jobstore import fairq
from tests.fast.harness import KEYS, serve, settings_for
from tests.support.processes import free_port


async def submit(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/v1/jobs", json=body)


async def test_accept_writes_record_and_celery_message_together(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    before = redis_client.llen(KEYS.queue("high"))
    response = await submit(client, task="demo.echo", args={"payload": {"n": 1}}, priority="high")

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["queue"] == "high"
    assert job["attempts"] == 0
    assert redis_client.llen(KEYS.queue("high")) == before + 1
    token = float(redis_client.lindex(KEYS.queue("high"), 0))
    seconds, micros = redis_client.time()
    assert 0 <= seconds + micros / 1e6 - token < 5, "the ready token is when it became ready"
    (message,) = [m for m in map(json.loads, fairq.ready_messages(redis_client, KEYS, "high"))
                  if m["headers"]["id"] == job["id"]]  # fmt: skip
    assert message["headers"]["id"] == job["id"]
    assert message["headers"]["task"] == "demo.echo"
    assert message["headers"]["eta"] is None
    assert message["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == []
    assert kwargs == {"payload": {"n": 1}}
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["state"] == "queued"


async def test_priority_defaults_to_the_tasks_queue(client: httpx.AsyncClient) -> None:
    assert (await submit(client, task="demo.sleep", args={"seconds": 1})).json()["queue"] == "low"
    counted = await submit(client, task="tests.count", args={"key": "k", "redis_url": "x"})
    assert counted.json()["queue"] == "high"


async def test_invalid_args_name_the_field_and_enqueue_nothing(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    before = redis_client.llen(KEYS.queue("low"))
    response = await submit(client, task="demo.sleep", args={"seconds": -5})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["type"] == "urn:conveyor:problem:validation-error"
    assert [e["pointer"] for e in problem["errors"]] == ["#/args/seconds"]
    assert "greater than or equal to 0" in problem["errors"][0]["detail"]
    assert "Traceback" not in response.text
    assert redis_client.llen(KEYS.queue("low")) == before


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"task": "demo.sleep", "args": {}}, "#/args/seconds"),
        ({"task": "demo.echo", "priority": "urgent"}, "#/priority"),
        ({"task": "demo.echo", "delay_seconds": -1}, "#/delay_seconds"),
        ({"task": "demo.echo", "max_retries": 1000}, "#/max_retries"),
        ({"task": "demo.echo", "colour": "red"}, "#/colour"),
        ({"task": "demo.echo", "callback_url": "not a url"}, "#/callback_url"),
        ({"args": {}}, "#/task"),
    ],
)
async def test_each_invalid_field_is_named(
    client: httpx.AsyncClient, body: dict[str, object], pointer: str
) -> None:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert pointer in [e["pointer"] for e in response.json()["errors"]]


async def test_unknown_task_lists_the_valid_ones(client: httpx.AsyncClient) -> None:
    response = await submit(client, task="no.such.task", args={})
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:conveyor:problem:unknown-task"
    assert {"demo.echo", "demo.sleep", "webhook.deliver", "email.send", "tests.count"} <= set(
        problem["valid_tasks"]
    )
    assert problem["errors"][0]["pointer"] == "#/task"


async def test_malformed_json_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_idempotent_replay_returns_the_same_job(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await submit(client, task="demo.echo", args={"payload": 1}, idempotency_key=key)
    queued = redis_client.llen(KEYS.queue("default"))
    replay = await client.post(
        "/v1/jobs",
        json={"task": "demo.echo", "args": {"payload": 1}},
        headers={"Idempotency-Key": key},
    )

    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["location"] == first.headers["location"]
    assert redis_client.llen(KEYS.queue("default")) == queued, "a replay must not enqueue again"


async def test_idempotency_key_with_a_different_body_is_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await submit(client, task="demo.echo", args={"payload": 1}, idempotency_key=key)
    assert first.is_success
    response = await submit(client, task="demo.echo", args={"payload": 2}, idempotency_key=key)
    assert response.status_code == 409
    assert response.json()["type"] == "urn:conveyor:problem:idempotency-conflict"


async def test_header_and_body_keys_must_agree(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/jobs",
        json={"task": "demo.echo", "idempotency_key": "a"},
        headers={"Idempotency-Key": "b"},
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "job_id", [str(uuid.uuid4()), "not-a-uuid", "a" * 300], ids=["unknown", "not a uuid", "long"]
)
async def test_unknown_job_is_404_not_pending(client: httpx.AsyncClient, job_id: str) -> None:
    response = await client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json()["type"] == "urn:conveyor:problem:job-not-found"
    assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 404


async def test_cancel_queued_job(client: httpx.AsyncClient) -> None:
    job = (await submit(client, task="demo.echo")).json()
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    # Idempotent.
    again = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.json()["state"] == "cancelled"


async def test_delayed_job_is_scheduled_in_redis_not_in_the_queue(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    before = redis_client.llen(KEYS.queue("default"))
    job = (await submit(client, task="demo.echo", delay_seconds=3600)).json()
    assert job["state"] == "scheduled"
    assert job["scheduled_for"] is not None
    assert redis_client.llen(KEYS.queue("default")) == before
    assert redis_client.zscore(KEYS.delayed, job["id"]) is not None

    await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert redis_client.zscore(KEYS.delayed, job["id"]) is None
    assert redis_client.hget(KEYS.delayed_messages, job["id"]) is None


async def test_delay_is_bounded(client: httpx.AsyncClient) -> None:
    response = await submit(client, task="demo.echo", delay_seconds=10**9)
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "#/delay_seconds"


async def test_catalogue_describes_every_task(client: httpx.AsyncClient) -> None:
    tasks = {t["name"]: t for t in (await client.get("/v1/tasks")).json()}
    assert tasks["demo.sleep"]["queue"] == "low"
    assert tasks["demo.sleep"]["args_schema"]["properties"]["seconds"]["maximum"] == 3600
    assert tasks["webhook.deliver"]["retry"]["max_retries"] == 8
    assert "RetryableError" in tasks["webhook.deliver"]["retry"]["retry_on"]
    assert tasks["tests.count"]["description"].startswith("Count executions")


async def test_openapi_documents_each_tasks_arguments(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    assert components["Submit_demo_sleep"]["properties"]["task"]["const"] == "demo.sleep"
    assert "SleepArgs" in components
    assert "seconds" in components["SleepArgs"]["properties"]
    assert "EmailArgs" in components
    assert (await client.get("/docs")).status_code == 200


async def test_probes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ok"}


async def test_redis_unreachable_is_a_fast_503_with_retry_after() -> None:
    nowhere = settings_for(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    async with serve(nowhere) as api, api.client() as client:
        started = time.monotonic()
        response = await client.post("/v1/jobs", json={"task": "demo.echo"})
        elapsed = time.monotonic() - started
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["type"] == "urn:conveyor:problem:broker-unavailable"
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert ready.status_code == 503
