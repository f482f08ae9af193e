"""Redis clients with the timeouts a broker blip needs (never hang, reconnect quickly)."""

from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from conveyor.core.settings import Settings


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "client_name": "conveyor",
    }


def sync_client(settings: Settings) -> "redis.Redis":
    """A blocking client (workers, beat); it retries a command through a short outage."""
    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
        **_options(settings),
    )


def async_client(settings: Settings) -> "redis.asyncio.Redis":
    """An asyncio client (API). It does not retry: the API answers 503 fast instead of hanging."""
    from redis.asyncio.retry import Retry as AsyncRetry

    return redis.asyncio.Redis.from_url(
        settings.redis_url.get_secret_value(),
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        **_options(settings),
    )
