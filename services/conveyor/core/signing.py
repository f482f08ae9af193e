"""HMAC-SHA256 signatures on outgoing webhooks, and their verification for receivers.

Header format (as Stripe's): `Conveyor-Signature: t=<unix seconds>,v2=<hex digest>` where the
digest is HMAC-SHA256(tenant key, signed string) and the signed string is

    "v2" LF <t> LF <Idempotency-Key> LF <Conveyor-Tenant> LF <raw body>

so the signature covers the timestamp, the body and the two headers a receiver acts on: an
attacker who captured one delivery can neither replay its body under another idempotency key
(to have it processed twice) nor relabel its tenant. Header values cannot hold a line feed,
so the fields cannot run into each other. `v1` (timestamp and body only) is gone: a v1-only
header does not verify.

Each tenant has a signing key of its own, derived from the deployment's secret
(`tenant_secret`; `conveyor keys webhook-secret --tenant T` prints it). A job's webhooks and
callbacks are signed with its tenant's key, so one tenant cannot make Conveyor sign a payload
that another tenant's receiver would accept.

Replays: a delivery is fresh for `tolerance_seconds` (300) either side of its timestamp. Within
that window a captured delivery can be sent again unchanged; `ReplayGuard` refuses the second
copy by remembering each verified delivery (its Idempotency-Key and timestamp) until its
window closes. Every attempt of a job carries the same Idempotency-Key (the job id) and a new
timestamp, so retries verify; telling a retry from work already done is the receiver's
idempotency, keyed by Idempotency-Key.
"""

import hashlib
import heapq
import hmac
import threading
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "Conveyor-Signature"
TENANT_HEADER = "Conveyor-Tenant"
IDEMPOTENCY_HEADER = "Idempotency-Key"
VERSION = "v2"
DEFAULT_TOLERANCE_SECONDS = 300


def tenant_secret(deployment_secret: str, tenant: str) -> str:
    """The signing key of `tenant`'s webhooks: HMAC-SHA256(deployment secret, tenant)."""
    message = f"conveyor-webhook-tenant:{tenant}".encode()
    return hmac.new(deployment_secret.encode(), message, hashlib.sha256).hexdigest()


def _digest(secret: str, timestamp: int, idempotency_key: str, tenant: str, body: bytes) -> str:
    signed = f"{VERSION}\n{timestamp}\n{idempotency_key}\n{tenant}\n".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int, *, idempotency_key: str, tenant: str) -> str:
    """The Conveyor-Signature value for `body` sent at `timestamp` with these
    Idempotency-Key and Conveyor-Tenant headers.
    """
    return f"t={timestamp},{VERSION}={_digest(secret, timestamp, idempotency_key, tenant, body)}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether `headers` (any mapping of a request's headers; names in any case) carry a
    valid, fresh signature of `body` under `secret`, covering their Idempotency-Key and
    Conveyor-Tenant. Stateless: it does not refuse a replay within the window (ReplayGuard
    does).
    """
    return _verified(secret, headers, body, tolerance_seconds, now) is not None


def _verified(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: int,
    now: float | None,
) -> tuple[int, str] | None:
    """The timestamp and Idempotency-Key of a valid, fresh delivery; None otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        timestamp, digests = _parse(lowered[SIGNATURE_HEADER.lower()])
        key = lowered[IDEMPOTENCY_HEADER.lower()]
        tenant = lowered[TENANT_HEADER.lower()]
    except (KeyError, ValueError):
        return None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return None
    expected = _digest(secret, timestamp, key, tenant, body)
    # Every digest is compared (a sender may add one per key while rotating).
    matched = [hmac.compare_digest(expected, digest) for digest in digests]
    return (timestamp, key) if any(matched) else None


def _parse(header: str) -> tuple[int, list[str]]:
    """The timestamp and the v2 digests of a Conveyor-Signature value."""
    timestamp: int | None = None
    digests = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamp = int(value)
        elif name == VERSION:
            digests.append(value)
    if timestamp is None or not digests:
        raise ValueError("no timestamp or no v2 signature")
    return timestamp, digests


class ReplayGuard:
    """`verify`, plus: each delivery verifies once. A delivery (Idempotency-Key, timestamp)
    is remembered until its tolerance window closes, after which `verify` refuses it for its
    age; memory is bounded by the deliveries received within one window. In memory, for one
    process: receivers with several replicas keep the same set in shared storage (a Redis
    `SET <key>:<t> 1 NX EX <2 * tolerance>`).
    """

    def __init__(self, secret: str, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS) -> None:
        self.secret = secret
        self.tolerance_seconds = tolerance_seconds
        self._seen: set[tuple[str, int]] = set()
        self._expiries: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
        """True for a valid, fresh delivery seen for the first time; False otherwise."""
        now = time.time() if now is None else now
        verified = _verified(self.secret, headers, body, self.tolerance_seconds, now)
        if verified is None:
            return False
        timestamp, key = verified
        with self._lock:
            # Forget deliveries whose window has closed: `verify` refuses them for their age.
            while self._expiries and self._expiries[0][0] < now - self.tolerance_seconds:
                old_timestamp, old_key = heapq.heappop(self._expiries)
                self._seen.discard((old_key, old_timestamp))
            if (key, timestamp) in self._seen:
                return False
            self._seen.add((key, timestamp))
            heapq.heappush(self._expiries, (timestamp, key))
        return True

    def __len__(self) -> int:
        """Deliveries remembered now."""
        return len(self._seen)
