"""Redis clients with the timeouts a broker blip needs (never hang, reconnect quickly)."""

from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from conveyor.core.settings import Settings


def _options(settings: Settings, socket_timeout: float, connect_timeout: float) -> dict[str, Any]:
    return {
        **settings.redis_tls_options(),
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": 10,
        "client_name": "conveyor",
    }


def sync_client(settings: Settings, *, quick: bool = False) -> "redis.Redis":
    """A blocking client (workers, beat); it retries a command through a short outage.

    `quick` is for a caller that must answer fast instead (the exporter, within a scrape).
    """
    if quick:
        return redis.Redis.from_url(
            settings.redis_dsn(),
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.05), retries=1),
            **_options(settings, socket_timeout=2.0, connect_timeout=1.0),
        )
    return redis.Redis.from_url(
        settings.redis_dsn(),
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
        **_options(settings, socket_timeout=10.0, connect_timeout=3.0),
    )


def stream_client(
    settings: Settings, block_seconds: float, max_connections: int
) -> "redis.asyncio.Redis":
    """An asyncio client for blocking stream reads (job events): its socket timeout outlasts
    a `block_seconds` XREAD, so only a silent Redis, not a quiet job, times it out. The API
    caps its streams below `max_connections`.
    """
    from redis.asyncio.retry import Retry as AsyncRetry

    return redis.asyncio.Redis.from_url(
        settings.redis_dsn(),
        retry=AsyncRetry(ExponentialBackoff(cap=0.1, base=0.05), retries=1),
        max_connections=max_connections,
        **_options(settings, socket_timeout=block_seconds + 2.0, connect_timeout=0.5),
    )


def async_client(settings: Settings) -> "redis.asyncio.Redis":
    """An asyncio client (API) with tight timeouts: one retry, then the API answers 503.

    Worst case, a silent (blackholed) Redis costs two 0.6 s timeouts before the 503 (measured:
    about 1.3 s), within the 2-second bound clients are promised.
    """
    from redis.asyncio.retry import Retry as AsyncRetry

    return redis.asyncio.Redis.from_url(
        settings.redis_dsn(),
        retry=AsyncRetry(ExponentialBackoff(cap=0.1, base=0.05), retries=1),
        **_options(settings, socket_timeout=0.6, connect_timeout=0.5),
    )
