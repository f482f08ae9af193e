"""`webhook.deliver` through the API in process: a job's headers cannot duplicate the
platform's (422 at submission, naming the header), and a destination the outbound policy
refuses leaves a job error that does not say what the name resolved to."""

import logging

import httpx
import pytest
import redis

from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from tests.fast.harness import KEYS, InProcessWorker, problem, serve, settings_for
from tests.support.receiver import Receiver


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("conveyor-tenant", "team-b"),
        ("conveyor-signature", "t=1,v2=00"),
        ("Conveyor-Job-Id", "another"),
        ("idempotency-key", "replayed"),
        ("host", "internal.example"),
        ("content-length", "0"),
        ("transfer-encoding", "chunked"),
        ("Connection", "close"),
        ("X-Split", "a\r\nConveyor-Tenant: team-b"),
        ("X Bad", "x"),
    ],
)
async def test_a_header_a_job_may_not_set_is_a_422_naming_it(
    client: httpx.AsyncClient, redis_client: "redis.Redis", hook: Receiver, name: str, value: str
) -> None:
    args = {"url": hook.url, "payload": {"n": 1}, "headers": {"X-Team": "ops", name: value}}
    response = await client.post("/v1/jobs", json={"task": "webhook.deliver", "args": args})
    body = problem(response, 422)
    (error,) = body["errors"]
    assert error["pointer"] == f"#/args/headers/{name}"
    assert redis_client.llen(KEYS.queue("default")) == 0


async def test_ordinary_headers_reach_the_receiver(
    client: httpx.AsyncClient, worker: InProcessWorker, hook: Receiver
) -> None:
    args = {"url": hook.url, "payload": {}, "headers": {"X-Team": "ops", "authorization": "t"}}
    response = await client.post("/v1/jobs", json={"task": "webhook.deliver", "args": args})
    assert response.status_code == 202, response.text
    worker.run_next("default")
    (request,) = hook.requests
    assert request.headers["X-Team"] == "ops"
    assert request.headers["authorization"] == "t"


@pytest.fixture
def public_only(redis_url: str) -> Settings:
    """The fast layer's settings without the loopback allow-list, as in production."""
    return settings_for(redis_url, webhook={"allowed_networks": []})


async def test_a_refused_destination_is_recorded_without_its_address(
    public_only: Settings, hook: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.tasks.webhook")
    url = hook.url.replace("127.0.0.1", "localhost")  # a name: accepted, resolved at delivery
    redis_client = sync_client(public_only)
    try:
        async with serve(public_only) as api, api.client() as client:
            submitted = await client.post(
                "/v1/jobs", json={"task": "webhook.deliver", "args": {"url": url, "payload": 1}}
            )
            assert submitted.status_code == 202, submitted.text
            InProcessWorker(redis_client, public_only).run_next("default")
            job = (await client.get(f"/v1/jobs/{submitted.json()['id']}")).json()
    finally:
        redis_client.close()
    assert job["state"] == "failed"
    assert job["attempts"] == 1  # refused permanently, not retried
    assert job["error"] == {
        "type": "PermanentError",
        "message": "localhost: destination refused by the platform's outbound policy "
        "(non-public address)",
    }
    assert hook.requests == []
    # What it resolved to, and why that is refused, is in the worker's log only.
    assert "loopback" in caplog.text
    assert "127.0.0.1" in caplog.text or "::1" in caplog.text
