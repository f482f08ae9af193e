"""HMAC-SHA256 signatures on outgoing webhooks, and their verification for receivers.

Header format (as Stripe's): `Conveyor-Signature: t=<unix seconds>,v1=<hex digest>` where the
digest is HMAC-SHA256(secret, "<t>.<raw body>"). The timestamp lets receivers reject replays.

Each tenant has a signing key of its own, derived from the deployment's secret
(`tenant_secret`; `conveyor keys webhook-secret --tenant T` prints it). A job's webhooks and
callbacks are signed with its tenant's key, so one tenant cannot make Conveyor sign a payload
that another tenant's receiver would accept.
"""

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Conveyor-Signature"


def tenant_secret(deployment_secret: str, tenant: str) -> str:
    """The signing key of `tenant`'s webhooks: HMAC-SHA256(deployment secret, tenant)."""
    message = f"conveyor-webhook-tenant:{tenant}".encode()
    return hmac.new(deployment_secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str, header: str, body: bytes, tolerance_seconds: int = 300, now: float | None = None
) -> bool:
    """Whether `header` is a valid, fresh signature of `body` under `secret`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        received = parts["v1"]
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, received)
