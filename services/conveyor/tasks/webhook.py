"""`webhook.deliver`: a signed JSON POST, retried on transient failures only."""

import logging
import re
import time
from typing import Any

import httpx
import orjson
from pydantic import Field, HttpUrl, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from conveyor.core.catalog import JobContext, RetryPolicy, TaskArgs, task
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.netguard import (
    IPAddress,
    NetGuard,
    RefusedAddressError,
    UnresolvableHostError,
    UnsafeUrlError,
)
from conveyor.core.queues import Queue
from conveyor.core.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TENANT_HEADER,
    sign,
    tenant_secret,
)

log = logging.getLogger(__name__)

# Statuses worth retrying besides 5xx: the receiver asked us to come back later.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Redirects that keep the method and body; a webhook POST is never turned into a GET.
FOLLOWED_REDIRECTS = frozenset({307, 308})

# Header names a job's `headers` may not set, in lower case (HTTP names are case-insensitive):
# the platform's own (a second copy would contradict the signed ones), and those that frame
# the message or concern the hop rather than the receiver (RFC 9110 7.6.1, RFC 9112).
PLATFORM_HEADERS = frozenset(
    {"content-type", "user-agent", IDEMPOTENCY_HEADER.lower(), "host", "content-length"}
)
TRANSPORT_HEADERS = frozenset(
    {
        "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "expect", "http2-settings",
    }
)  # fmt: skip
RESERVED_PREFIXES = ("conveyor-", "proxy-")  # Conveyor-*: the platform's; Proxy-*: hop-by-hop
# RFC 9110 5.1 (token) and 5.5 (field value: visible ASCII, inner spaces and tabs only;
# httpx sends header values as ASCII).
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE_PATTERN = r"^(?:[!-~](?:[ \t]*[!-~])*)?$"
_NAME = re.compile(HEADER_NAME_PATTERN.removeprefix("^").removesuffix("$"))
_VALUE = re.compile(HEADER_VALUE_PATTERN.removeprefix("^").removesuffix("$"))


def header_fault(name: str, value: str) -> str | None:
    """What is wrong with a job's header `name: value`, or None."""
    lowered = name.lower()
    if not _NAME.fullmatch(name):
        return "not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
    if lowered in PLATFORM_HEADERS or lowered.startswith("conveyor-"):
        return f"{name} is set by the platform; a job cannot set it"
    if lowered in TRANSPORT_HEADERS or lowered.startswith(RESERVED_PREFIXES):
        return f"{name} concerns the connection, not the receiver; a job cannot set it"
    if "\r" in value or "\n" in value:
        return "the value contains a line break (CR or LF)"
    if not _VALUE.fullmatch(value):
        return "the value must be visible ASCII characters, with spaces or tabs only between them"
    return None


class WebhookArgs(TaskArgs):
    """Arguments of `webhook.deliver`."""

    url: HttpUrl = Field(..., description="Where to POST.")
    payload: Any = Field(..., description="JSON body.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra request headers. Names are HTTP tokens, each at most once in any "
        "case; values are visible ASCII. The platform's own (Content-Type, User-Agent, "
        "Idempotency-Key, Conveyor-*) and the connection's (Host, Content-Length, "
        "Transfer-Encoding, Connection, Proxy-*, …) are refused.",
        json_schema_extra={
            "propertyNames": {"pattern": HEADER_NAME_PATTERN},
            "additionalProperties": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
        },
    )

    @field_validator("headers")
    @classmethod
    def _headers_are_the_tenants_own(cls, headers: dict[str, str]) -> dict[str, str]:
        """Refuse reserved, duplicate (case-insensitively) or malformed headers, each with
        an error located at its name (the API's pointer: `#/args/headers/<name>`).
        """
        errors: list[InitErrorDetails] = []
        seen: set[str] = set()
        for name, value in headers.items():
            fault = header_fault(name, value)
            if fault is None and name.lower() in seen:
                fault = f"{name} is given twice (header names are case-insensitive)"
            seen.add(name.lower())
            if fault is not None:
                errors.append(
                    {
                        "type": PydanticCustomError("webhook_header", "{fault}", {"fault": fault}),
                        "loc": (name,),
                        "input": value,
                    }
                )
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return headers


@task(
    name="webhook.deliver",
    queue=Queue.DEFAULT,
    args=WebhookArgs,
    retry=RetryPolicy(max_retries=8, backoff_seconds=5.0, max_backoff_seconds=3600.0),
    # A whole attempt, however the receiver trickles its answer (each byte restarts httpx's
    # read timeout): the attempt's time limit stops it, and a tenant cannot ask for more.
    timeout_seconds=30,
    max_timeout_seconds=60,
)
def deliver(ctx: JobContext, args: WebhookArgs) -> dict[str, Any]:
    """POST `payload` as JSON with an HMAC-SHA256 signature and the job id as Idempotency-Key.

    Retried on 5xx, 408/425/429, timeouts and connection errors; any other 4xx fails at once.
    Every attempt sends the same Idempotency-Key, so a receiver can drop duplicates.
    """
    settings = ctx.settings.webhook
    body = orjson.dumps(args.payload)
    secret = tenant_secret(settings.secret(), ctx.tenant)
    signature = sign(secret, body, int(time.time()), idempotency_key=ctx.job_id, tenant=ctx.tenant)
    platform = {
        "Content-Type": "application/json",
        "User-Agent": settings.user_agent,
        IDEMPOTENCY_HEADER: ctx.job_id,
        "Conveyor-Job-Id": ctx.job_id,
        "Conveyor-Attempt": str(ctx.attempt),
        TENANT_HEADER: ctx.tenant,
        SIGNATURE_HEADER: signature,
    }
    # The model refuses reserved names already; this keeps the platform's headers the only
    # copies even for arguments built without validation (model_construct).
    headers = {
        **{k: v for k, v in args.headers.items() if header_fault(k, v) is None},
        **platform,
    }
    guard = NetGuard(settings.allowed_networks)
    try:
        with httpx.Client(timeout=settings.timeout_seconds, follow_redirects=False) as client:
            response = post_guarded(
                client, guard, str(args.url), body, headers, settings.max_redirects
            )
    except RefusedAddressError as exc:
        # The job's error says only "refused"; what the name resolved to stays here, or the
        # job's error would tell a tenant what the platform's resolver knows.
        log.warning(
            "webhook refused by the outbound policy: %s is %s, %s",
            exc.host,
            exc.address,
            exc.reason,
            extra={
                "destination_host": exc.host,
                "destination_address": str(exc.address),
                "refusal_reason": exc.reason,
            },
        )
        raise PermanentError(str(exc)) from exc
    except UnsafeUrlError as exc:  # a scheme other than http(s) after a redirect
        raise PermanentError(str(exc)) from exc
    except UnresolvableHostError as exc:
        log.warning(
            "webhook destination did not resolve: %s: %s",
            exc.host,
            exc.detail,
            extra={"destination_host": exc.host, "resolver_error": exc.detail},
        )
        raise RetryableError(str(exc)) from exc
    except (httpx.TransportError, OSError) as exc:  # timeouts, refusals, resets
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    status = response.status_code
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise RetryableError(f"receiver answered {status}")
    if status >= 300:
        raise PermanentError(
            f"receiver answered {status}; redirects other than 307/308 are not followed"
        )
    return {"status_code": status, "elapsed_ms": round(response.elapsed.total_seconds() * 1000, 1)}


def post_guarded(
    client: httpx.Client,
    guard: NetGuard,
    url: str,
    body: bytes,
    headers: dict[str, str],
    max_redirects: int,
) -> httpx.Response:
    """POST to `url` through `guard`: every hop's address is resolved and checked, and the
    connection goes to that checked address, so neither a redirect nor a DNS answer that
    changes after the check can reach a refused address.
    """
    target = httpx.URL(url)
    for _ in range(max_redirects + 1):
        guard.check_scheme(target.scheme)
        host = target.host
        port = target.port or (443 if target.scheme == "https" else 80)
        request_headers = {**headers, "Host": target.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        response = _post_first_reachable(
            client, target, guard.resolve(host, port), body, request_headers, extensions
        )
        location = response.headers.get("location")
        if response.status_code not in FOLLOWED_REDIRECTS or not location:
            return response
        target = target.join(location)
    raise PermanentError(f"more than {max_redirects} redirects")


def _post_first_reachable(
    client: httpx.Client,
    target: httpx.URL,
    addresses: list[IPAddress],
    body: bytes,
    headers: dict[str, str],
    extensions: dict[str, Any],
) -> httpx.Response:
    # Like a browser: try each checked address in turn (say, ::1 then 127.0.0.1).
    for index, address in enumerate(addresses):
        pinned = target.copy_with(host=str(address))
        request = client.build_request(
            "POST", pinned, content=body, headers=headers, extensions=extensions
        )
        try:
            # The receiver's body is never read: only its status matters, and a hostile
            # receiver could otherwise send gigabytes into the worker's memory.
            response = client.send(request, stream=True)
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
            continue
        response.close()
        return response
    raise OSError(f"{target.host} has no address")
