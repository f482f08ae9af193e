"""`email.send`: one message through the SMTP relay configured in settings."""

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from pydantic import EmailStr, Field

from conveyor.core.catalog import JobContext, RetryPolicy, TaskArgs, task
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.queues import Queue
from conveyor.core.settings import SmtpSecurity, SmtpSettings


class EmailArgs(TaskArgs):
    """Arguments of `email.send`."""

    to: list[EmailStr] = Field(..., min_length=1, max_length=50)
    cc: list[EmailStr] = Field(default_factory=list, max_length=50)
    bcc: list[EmailStr] = Field(default_factory=list, max_length=50)
    subject: str = Field(..., max_length=998)
    text: str = Field(..., max_length=1_000_000, description="Plain-text body.")
    html: str | None = Field(None, max_length=1_000_000, description="Optional HTML alternative.")
    reply_to: EmailStr | None = None


@task(
    name="email.send",
    queue=Queue.DEFAULT,
    args=EmailArgs,
    retry=RetryPolicy(max_retries=5, backoff_seconds=10.0, max_backoff_seconds=1800.0),
    # A whole attempt, however slowly the relay answers (each reply restarts the socket
    # timeout): the attempt's time limit stops it, and a tenant cannot ask for more.
    timeout_seconds=120,
    max_timeout_seconds=300,
)
def send(ctx: JobContext, args: EmailArgs) -> dict[str, Any]:
    """Send the message; 4xx SMTP replies and network errors are retried, 5xx are not.

    The Message-ID is derived from the job id, so a message re-sent after a worker crash
    carries the same id and mail systems can recognise the duplicate.
    """
    smtp = ctx.settings.smtp
    message = _build(args, smtp.sender, message_id=f"<{ctx.job_id}@conveyor>")
    recipients = [*args.to, *args.cc, *args.bcc]
    try:
        with _connect(smtp) as client:
            refused = client.send_message(message, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        raise PermanentError(f"all recipients refused: {sorted(exc.recipients)}") from exc
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise RetryableError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
        raise PermanentError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        where = f"SMTP relay {smtp.host}:{smtp.port} ({smtp.security})"
        raise RetryableError(f"{where}: {type(exc).__name__}: {exc}") from exc
    return {"message_id": message["Message-ID"], "refused": sorted(refused)}


def _build(args: EmailArgs, sender: str, message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(args.to)
    if args.cc:
        message["Cc"] = ", ".join(args.cc)
    if args.reply_to:
        message["Reply-To"] = args.reply_to
    message["Subject"] = args.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(args.text)
    if args.html is not None:
        message.add_alternative(args.html, subtype="html")
    return message


def _connect(smtp: SmtpSettings) -> smtplib.SMTP:
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if smtp.security is SmtpSecurity.TLS:
        client = smtplib.SMTP_SSL(
            smtp.host, smtp.port, timeout=smtp.timeout_seconds, context=context
        )
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
    try:
        if smtp.security is SmtpSecurity.STARTTLS:
            client.starttls(context=context)
        if smtp.username:
            password = smtp.password.get_secret_value() if smtp.password else ""
            client.login(smtp.username, password)
    except BaseException:
        client.close()
        raise
    return client
