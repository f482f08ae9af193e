"""`webhook.deliver` against a real local HTTP server: signing, idempotency header, and which
outcomes are retried."""

import json
import socket

import httpx
import pytest

from conveyor.core.catalog import JobContext
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.signing import sign, tenant_secret, verify
from conveyor.tasks.webhook import WebhookArgs, deliver
from tests.support.processes import TERMINAL, Platform, wait_for_job
from tests.support.receiver import receiver


def context(timeout: float = 5.0) -> JobContext:
    settings = Settings(
        webhook={  # type: ignore[arg-type]
            "signing_secret": "s3cret",
            "timeout_seconds": timeout,
            "allowed_networks": ["127.0.0.0/8"],
        },
    )
    return JobContext(
        job_id="job-1", task="webhook.deliver", queue=Queue.DEFAULT, attempt=2,
        progress=lambda *a, **k: None, settings=settings, tenant="team-a",
    )  # fmt: skip


def test_delivery_is_signed_and_carries_the_job_id() -> None:
    with receiver([204]) as hook:
        result = deliver(
            context(), WebhookArgs(url=hook.url, payload={"a": 1}, headers={"X-Team": "ops"})
        )
    assert result["status_code"] == 204
    request = hook.requests[0]
    assert json.loads(request.body) == {"a": 1}
    assert request.headers["Idempotency-Key"] == "job-1"
    assert request.headers["Conveyor-Attempt"] == "2"
    assert request.headers["X-Team"] == "ops"
    assert request.headers["Content-Type"] == "application/json"
    # Signed with the tenant's own key, not the deployment's secret nor another tenant's key.
    signature = request.headers["Conveyor-Signature"]
    assert request.headers["Conveyor-Tenant"] == "team-a"
    assert verify(tenant_secret("s3cret", "team-a"), signature, request.body)
    assert not verify(tenant_secret("s3cret", "team-b"), signature, request.body)
    assert not verify("s3cret", signature, request.body)


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    with receiver([status]) as hook, pytest.raises(RetryableError, match=str(status)):
        deliver(context(), WebhookArgs(url=hook.url, payload={}))


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
def test_client_errors_are_permanent(status: int) -> None:
    with receiver([status]) as hook, pytest.raises(PermanentError, match=str(status)):
        deliver(context(), WebhookArgs(url=hook.url, payload={}))


def test_timeout_is_retryable() -> None:
    with receiver([200], delay_seconds=2) as hook, pytest.raises(RetryableError, match="Timeout"):
        deliver(context(timeout=0.3), WebhookArgs(url=hook.url, payload={}))


def test_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="ConnectError"):
        deliver(context(), WebhookArgs(url=f"http://127.0.0.1:{port}/", payload={}))


def test_signature_rejects_tampering_and_old_timestamps() -> None:
    header = sign("k", b'{"a":1}', 1_000_000)
    assert verify("k", header, b'{"a":1}', now=1_000_100)
    assert not verify("k", header, b'{"a":2}', now=1_000_100)
    assert not verify("k", header, b'{"a":1}', now=1_000_000 + 301)
    assert not verify("k", "garbage", b"")


@pytest.mark.slow
def test_webhook_job_retries_a_503_then_succeeds(platform: Platform) -> None:
    with receiver([503, 200]) as hook, platform.http() as client:
        job = client.post(
            "/v1/jobs",
            json={"task": "webhook.deliver", "args": {"url": hook.url, "payload": {"n": 1}}},
        ).json()
        # The built-in backoff starts at 5 s; jitter brings it down to no less than 2.5 s.
        done = wait_for_job(client, job["id"], TERMINAL, timeout=30)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 2
    assert [r.headers["Idempotency-Key"] for r in hook.requests] == [job["id"], job["id"]]


@pytest.mark.slow
def test_webhook_job_fails_at_once_on_404(platform: Platform) -> None:
    with receiver([404]) as hook, platform.http() as client:
        job = client.post(
            "/v1/jobs", json={"task": "webhook.deliver", "args": {"url": hook.url, "payload": 1}}
        ).json()
        done = wait_for_job(client, job["id"], TERMINAL)
    assert done["state"] == "failed"
    assert done["attempts"] == 1
    assert done["error"]["type"] == "PermanentError"
    assert len(hook.requests) == 1


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="URL scheme"):
        WebhookArgs(url="ftp://example.com/x", payload={})  # type: ignore[arg-type]
    assert httpx.URL(str(WebhookArgs(url="https://example.com/x", payload=1).url)).scheme == "https"
