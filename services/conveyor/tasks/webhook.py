"""`webhook.deliver`: a signed JSON POST, retried on transient failures only."""

import time
from typing import Any

import httpx
import orjson
from pydantic import BaseModel, Field, HttpUrl

from conveyor.core.catalog import JobContext, RetryPolicy, task
from conveyor.core.errors import PermanentError, RetryableError
from conveyor.core.netguard import IPAddress, NetGuard, UnsafeUrlError
from conveyor.core.queues import Queue
from conveyor.core.signing import SIGNATURE_HEADER, sign, tenant_secret

# Statuses worth retrying besides 5xx: the receiver asked us to come back later.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Redirects that keep the method and body; a webhook POST is never turned into a GET.
FOLLOWED_REDIRECTS = frozenset({307, 308})


class WebhookArgs(BaseModel):
    """Arguments of `webhook.deliver`."""

    url: HttpUrl = Field(..., description="Where to POST.")
    payload: Any = Field(..., description="JSON body.")
    headers: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Extra request headers."
    )


@task(
    name="webhook.deliver",
    queue=Queue.DEFAULT,
    args=WebhookArgs,
    retry=RetryPolicy(max_retries=8, backoff_seconds=5.0, max_backoff_seconds=3600.0),
)
def deliver(ctx: JobContext, args: WebhookArgs) -> dict[str, Any]:
    """POST `payload` as JSON with an HMAC-SHA256 signature and the job id as Idempotency-Key.

    Retried on 5xx, 408/425/429, timeouts and connection errors; any other 4xx fails at once.
    Every attempt sends the same Idempotency-Key, so a receiver can drop duplicates.
    """
    settings = ctx.settings.webhook
    body = orjson.dumps(args.payload)
    secret = tenant_secret(settings.signing_secret.get_secret_value(), ctx.tenant)
    headers = {
        **args.headers,
        "Content-Type": "application/json",
        "User-Agent": settings.user_agent,
        "Idempotency-Key": ctx.job_id,
        "Conveyor-Job-Id": ctx.job_id,
        "Conveyor-Attempt": str(ctx.attempt),
        "Conveyor-Tenant": ctx.tenant,
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
    }
    guard = NetGuard(settings.allowed_networks)
    try:
        with httpx.Client(timeout=settings.timeout_seconds, follow_redirects=False) as client:
            response = post_guarded(
                client, guard, str(args.url), body, headers, settings.max_redirects
            )
    except UnsafeUrlError as exc:
        raise PermanentError(str(exc)) from exc
    except (httpx.TransportError, OSError) as exc:  # timeouts, refusals, resets, DNS failures
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
