"""`email.send` against a real SMTP server (aiosmtpd)."""

import pytest

from conveyor.core.catalog import JobContext
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.tasks.email import EmailArgs, send
from tests.support.processes import TERMINAL, Platform, free_port, wait_for_job
from tests.support.smtp import smtp_server

ARGS = {
    "to": ["dev@example.com"],
    "cc": ["lead@example.com"],
    "bcc": ["audit@example.com"],
    "subject": "Build finished",
    "text": "All green.",
    "html": "<p>All green.</p>",
}


def context(port: int) -> JobContext:
    settings = Settings(smtp={"host": "127.0.0.1", "port": port, "sender": "ci@example.com"})  # type: ignore[arg-type]
    return JobContext(
        job_id="0b7a", task="email.send", queue=Queue.DEFAULT, attempt=1,
        progress=lambda *a, **k: None, settings=settings,
    )  # fmt: skip


def test_message_arrives_with_every_recipient_and_a_stable_message_id() -> None:
    with smtp_server() as box:
        result = send(context(box.port), EmailArgs.model_validate(ARGS))
    recipients, message = box.messages[0]
    assert sorted(recipients) == ["audit@example.com", "dev@example.com", "lead@example.com"]
    assert message["Subject"] == "Build finished"
    assert message["From"] == "ci@example.com"
    assert message["Cc"] == "lead@example.com"
    assert "Bcc" not in message
    assert message["Message-ID"] == "<0b7a@conveyor>" == result["message_id"]
    parts = {part.get_content_type(): part.get_payload() for part in message.walk()}
    assert "All green." in parts["text/plain"]
    assert "<p>All green.</p>" in parts["text/html"]


def test_temporary_smtp_error_is_retryable() -> None:
    with (
        smtp_server("451 4.3.0 try again later") as box,
        pytest.raises(RetryableError, match="451"),
    ):
        send(context(box.port), EmailArgs.model_validate(ARGS))


def test_permanent_smtp_error_is_not_retried() -> None:
    with smtp_server("554 5.7.1 rejected") as box, pytest.raises(PermanentError, match="554"):
        send(context(box.port), EmailArgs.model_validate(ARGS))


def test_unreachable_relay_is_retryable() -> None:
    with pytest.raises(RetryableError):
        send(context(free_port()), EmailArgs.model_validate(ARGS))


def test_addresses_are_validated() -> None:
    with pytest.raises(ValueError, match="to"):
        EmailArgs.model_validate({**ARGS, "to": ["not-an-address"]})


@pytest.mark.slow
def test_email_job_through_a_worker(redis_server, module_logs) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import fresh_db

    with smtp_server() as box:
        platform = Platform(
            redis_server, fresh_db(redis_server), module_logs,
            CONVEYOR_SMTP__HOST="127.0.0.1", CONVEYOR_SMTP__PORT=str(box.port),
        )  # fmt: skip
        try:
            platform.start_api()
            platform.start_worker("default")
            with platform.http() as client:
                job = client.post("/v1/jobs", json={"task": "email.send", "args": ARGS}).json()
                done = wait_for_job(client, job["id"], TERMINAL)
        finally:
            platform.stop()
    assert done["state"] == "succeeded", done
    assert box.messages[0][1]["Message-ID"] == f"<{job['id']}@conveyor>"


def test_an_unreachable_relay_is_named_in_the_error() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RetryableError, match=rf"SMTP relay 127\.0\.0\.1:{port} \(none\): "):
        send(context(port), EmailArgs.model_validate(ARGS))
