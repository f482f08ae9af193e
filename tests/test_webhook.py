"""`webhook.deliver` against a real local HTTP server: signing, idempotency header, and which
outcomes are retried; the headers a job may set, and what a refused destination tells it."""

import json
import logging
import socket

import httpx
import pytest
from pydantic import HttpUrl, ValidationError

from conveyor.core.catalog import JobContext
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.signing import ReplayGuard, sign, tenant_secret, verify
from conveyor.tasks.webhook import WebhookArgs, deliver
from tests.support.processes import TERMINAL, Platform, wait_for_job
from tests.support.receiver import receiver

SECRET = "s3cret-s3cret-s3cret"


def context(
    timeout: float = 5.0, allowed_networks: tuple[str, ...] = ("127.0.0.0/8",)
) -> JobContext:
    settings = Settings(
        webhook={  # type: ignore[arg-type]
            "signing_secret": SECRET,
            "timeout_seconds": timeout,
            "allowed_networks": list(allowed_networks),
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
    assert request.headers["Conveyor-Tenant"] == "team-a"
    assert request.headers["Conveyor-Signature"].startswith("t=")
    assert ",v2=" in request.headers["Conveyor-Signature"]
    assert verify(tenant_secret(SECRET, "team-a"), request.headers, request.body)
    assert not verify(tenant_secret(SECRET, "team-b"), request.headers, request.body)
    assert not verify(SECRET, request.headers, request.body)
    # The signature covers Idempotency-Key and Conveyor-Tenant: a captured delivery replayed
    # under another idempotency key (to be processed twice), or relabelled, does not verify.
    key = tenant_secret(SECRET, "team-a")
    assert not verify(key, {**request.headers, "Idempotency-Key": "job-2"}, request.body)
    assert not verify(key, {**request.headers, "Conveyor-Tenant": "team-b"}, request.body)


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


def signed(body: bytes, t: int, key: str = "job-1", tenant: str = "team-a") -> dict[str, str]:
    """The headers of a delivery of `body` signed with "k" at `t`."""
    return {
        "Idempotency-Key": key,
        "Conveyor-Tenant": tenant,
        "Conveyor-Signature": sign("k", body, t, idempotency_key=key, tenant=tenant),
    }


def test_signature_rejects_tampering_and_old_timestamps() -> None:
    headers = signed(b'{"a":1}', 1_000_000)
    assert verify("k", headers, b'{"a":1}', now=1_000_100)
    assert not verify("k", headers, b'{"a":2}', now=1_000_100)
    assert not verify("k", headers, b'{"a":1}', now=1_000_000 + 301)
    assert not verify("k", headers, b'{"a":1}', now=1_000_000 - 301)
    assert not verify("k", {**headers, "Conveyor-Signature": "garbage"}, b"")
    assert not verify("k", {}, b'{"a":1}', now=1_000_100)
    # Header names in any case, as a receiver's framework hands them over.
    assert verify("k", {k.lower(): v for k, v in headers.items()}, b'{"a":1}', now=1_000_100)


def test_signature_covers_the_idempotency_key_and_the_tenant() -> None:
    body = b'{"order":7}'
    headers = signed(body, 1_000_000)
    assert verify("k", headers, body, now=1_000_000)
    # The attack: replay a captured body under a fresh idempotency key, so that the receiver's
    # deduplication processes it again, or under another tenant's name.
    for name, value in [("Idempotency-Key", "job-2"), ("Conveyor-Tenant", "team-b")]:
        assert not verify("k", {**headers, name: value}, body, now=1_000_000)
    # Fields cannot slide into each other (the separator cannot occur in a header value).
    assert not verify("k", signed(body, 1_000_000, key="job-1\nteam-a", tenant=""), body)
    # A v1 signature (timestamp and body only) does not verify any more.
    v1 = {**headers, "Conveyor-Signature": "t=1000000,v1=" + "0" * 64}
    assert not verify("k", v1, body, now=1_000_000)


def test_the_replay_guard_accepts_each_delivery_once() -> None:
    guard = ReplayGuard("k", tolerance_seconds=300)
    body = b'{"a":1}'
    first = signed(body, 1_000_000)
    assert guard.verify(first, body, now=1_000_001)
    assert not guard.verify(first, body, now=1_000_002)  # the same delivery again: a replay
    # A retry of the same job is signed anew (same key, new timestamp): it verifies, and the
    # receiver's idempotency (by Idempotency-Key) decides whether to act on it.
    retry = signed(body, 1_000_030)
    assert guard.verify(retry, body, now=1_000_030)
    assert not guard.verify(retry, body, now=1_000_031)
    assert not guard.verify({**first, "Conveyor-Signature": "t=1,v2=00"}, body, now=1_000_031)
    # Memory is bounded by the window: once closed, a delivery is forgotten, and refused for
    # its age instead.
    assert len(guard) == 2
    assert guard.verify(signed(body, 1_000_320, key="job-2"), body, now=1_000_320)
    assert len(guard) == 2  # first (t=1,000,000) forgotten at 1,000,300; retry and job-2 kept
    assert not guard.verify(first, body, now=1_000_320)
    assert guard.verify(signed(body, 1_000_700, key="job-3"), body, now=1_000_700)
    assert len(guard) == 1  # only job-3's window is open


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


def test_a_trickling_receiver_holds_an_attempt_no_longer_than_its_time_limit(
    platform: Platform,
) -> None:
    # One byte a second never trips httpx's 10 s read timeout; the attempt's time limit
    # (here 2 s; at most max_timeout_seconds, 60 s, for webhook.deliver) ends it.
    with receiver(trickle_seconds=1.0) as hook, platform.http() as client:
        body = {"task": "webhook.deliver", "args": {"url": hook.url, "payload": 1},
                "timeout_seconds": 2, "max_retries": 0}  # fmt: skip
        job = client.post("/v1/jobs", json=body).json()
        done = wait_for_job(client, job["id"], TERMINAL, timeout=60)
    assert done["state"] == "failed"
    assert done["error"]["type"] == "TimeLimitExceeded"


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


def test_a_refused_destination_fails_without_saying_what_it_resolved_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.tasks.webhook")
    with receiver([200]) as hook:
        url = hook.url.replace("127.0.0.1", "localhost")
        with pytest.raises(PermanentError) as refused:
            deliver(context(allowed_networks=()), WebhookArgs(url=url, payload={}))
        assert hook.requests == []
    message = str(refused.value)
    assert message == (
        "localhost: destination refused by the platform's outbound policy (non-public address)"
    )
    assert "127.0.0.1" not in message
    assert "::1" not in message
    # The detail stays in the worker's log, as fields of the record too.
    (record,) = [r for r in caplog.records if r.name == "conveyor.tasks.webhook"]
    assert record.destination_host == "localhost"  # type: ignore[attr-defined]
    assert record.refusal_reason == "loopback"  # type: ignore[attr-defined]
    assert record.destination_address in {"127.0.0.1", "::1"}  # type: ignore[attr-defined]
    assert record.destination_address in caplog.text  # type: ignore[attr-defined]


def test_an_unresolvable_destination_is_retried_with_a_generic_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    caplog.set_level(logging.WARNING, logger="conveyor.tasks.webhook")
    with pytest.raises(RetryableError) as failed:
        deliver(context(), WebhookArgs(url="https://hooks.example.com/x", payload={}))
    assert str(failed.value) == "cannot resolve hooks.example.com"
    assert "Temporary failure in name resolution" in caplog.text


def test_ordinary_headers_are_accepted() -> None:
    headers = {"Authorization": "Bearer abc", "X-Team": "ops", "x-trace": "a b\tc", "X-E": ""}
    assert WebhookArgs(url="https://example.com/", payload=1, headers=headers).headers == headers


@pytest.mark.parametrize(
    "name",
    [
        # The platform's own, in any case (a second copy would contradict the signed ones).
        "conveyor-tenant", "CONVEYOR-SIGNATURE", "Conveyor-Job-Id", "conveyor-attempt",
        "Conveyor-Anything", "idempotency-key", "IDEMPOTENCY-KEY", "content-type", "User-Agent",
        # The connection's: framing and hop-by-hop.
        "host", "Host", "content-length", "Transfer-Encoding", "connection", "Keep-Alive", "TE",
        "trailer", "upgrade", "expect", "proxy-authorization", "Proxy-Connection",
    ],
)  # fmt: skip
def test_reserved_headers_are_refused_case_insensitively(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        WebhookArgs(url="https://example.com/", payload=1, headers={name: "x"})
    (error,) = refused.value.errors()
    assert error["loc"] == ("headers", name)
    assert name in error["msg"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Bad Name", "x"), ("X-Colon:", "x"), ("", "x"), ("X-Ümlaut", "x"), ("X-A\r\n", "x"),
        ("X-Split", "a\r\nConveyor-Tenant: team-b"), ("X-LF", "a\nb"), ("X-CR", "a\rb"),
        ("X-Nul", "a\x00b"), ("X-Lead", " a"), ("X-Trail", "a "), ("X-Utf8", "café"),
    ],
)  # fmt: skip
def test_malformed_headers_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        WebhookArgs(url="https://example.com/", payload=1, headers={name: value})
    assert refused.value.errors()[0]["loc"] == ("headers", name)


def test_a_header_given_twice_in_different_cases_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        WebhookArgs(url="https://example.com/", payload=1, headers={"X-A": "1", "x-a": "2"})
    assert refused.value.errors()[0]["loc"] == ("headers", "x-a")


def test_the_platforms_headers_are_the_only_copies_on_the_wire() -> None:
    # Arguments built without validation (model_construct) still cannot add a second copy.
    forged = {"conveyor-tenant": "team-b", "idempotency-key": "other", "X-Team": "ops"}
    with receiver([204]) as hook:
        args = WebhookArgs.model_construct(url=HttpUrl(hook.url), payload={}, headers=forged)
        deliver(context(), args)
    headers = hook.requests[0].headers
    assert "conveyor-tenant" not in headers
    assert "idempotency-key" not in headers
    assert headers["Conveyor-Tenant"] == "team-a"
    assert headers["X-Team"] == "ops"


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="URL scheme"):
        WebhookArgs(url="ftp://example.com/x", payload={})
    assert httpx.URL(str(WebhookArgs(url="https://example.com/x", payload=1).url)).scheme == "https"
