"""Redis clients with the timeouts a broker blip needs (never hang, reconnect quickly).

With Sentinel (`redis_sentinel.addresses`), every client is a Sentinel-managed one: each new
connection asks the Sentinels for the current primary, and a connection that meets a demoted
primary (READONLY) is dropped and reconnects to the new one, so no client keeps writing to it.
"""

from typing import Any
from urllib.parse import quote, unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.connection import parse_url
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from conveyor.core.settings import Settings


def _demoted(exc: Exception) -> bool:
    """A refusal meaning "not the primary to write to now": an isolated old primary under
    `min-replicas-to-write` (NOREPLICAS). redis-py already treats READONLY so.
    """
    return str(exc).startswith("NOREPLICAS")


class HiredisCommands:
    """Commands packed by hiredis (C) on an asyncio connection, as redis-py's blocking
    connections already do when hiredis is installed: redis-py's asyncio connections pack in
    Python, about 1 µs per argument against 0.17 (an accept call of 64 jobs has ~1,000, an
    audit batch's XADDs 8 each). The bytes are the same (`tests/fast/test_redis_packing.py`);
    what hiredis cannot pack (None, a bool) is a DataError, as with redis-py's own packer.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command in the Redis protocol (a multi-word command name is split, as
        redis-py does).
        """
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        if memoryview in map(type, args):  # a scan in C: no Python frame per argument
            # hiredis packs a memoryview as its underlying buffer, strides ignored.
            args = tuple(bytes(arg) if type(arg) is memoryview else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            # hiredis takes bytes, str, int, float (and memoryview) only; a bytearray is
            # copied, and only after a refusal: scanning every argument first in Python cost
            # ~0.2 µs each (6 per accepted job).
            if not any(isinstance(arg, bytearray) for arg in args):
                raise redis.exceptions.DataError(str(exc)) from exc
        args = tuple(bytes(arg) if isinstance(arg, bytearray) else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis.exceptions.DataError(str(exc)) from exc


class AsyncConnection(HiredisCommands, redis.asyncio.Connection):
    """The asyncio clients' connection (commands packed by hiredis)."""


class AsyncSSLConnection(HiredisCommands, redis.asyncio.SSLConnection):
    """`AsyncConnection` over TLS."""


class AsyncUnixConnection(HiredisCommands, redis.asyncio.UnixDomainSocketConnection):
    """`AsyncConnection` over a Unix socket (a `unix://` URL)."""


class PrimaryConnection(redis.sentinel.SentinelManagedConnection):
    """A Sentinel-managed connection that also leaves a primary refusing writes for want of
    replicas: it disconnects, so the retry asks the Sentinels again (a new primary, or the
    same one, whose refusal then surfaces as a connection error: 503, or a worker's reconnect).
    """

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """The reply; NOREPLICAS disconnects and raises ConnectionError."""
        try:
            return super().read_response(*args, **kwargs)
        except redis.exceptions.ResponseError as exc:
            if not _demoted(exc):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise redis.exceptions.ConnectionError(f"primary refuses writes: {exc}") from exc


class AsyncPrimaryConnection(HiredisCommands, redis.asyncio.sentinel.SentinelManagedConnection):
    """`PrimaryConnection` for the asyncio clients (the API), commands packed by hiredis."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """The reply; NOREPLICAS disconnects and raises ConnectionError."""
        try:
            return await super().read_response(*args, **kwargs)
        except redis.exceptions.ResponseError as exc:
            if not _demoted(exc):
                raise
            await self.disconnect()
            raise redis.exceptions.ConnectionError(f"primary refuses writes: {exc}") from exc


class PrimarySSLConnection(PrimaryConnection, redis.SSLConnection):
    """`PrimaryConnection` over TLS."""


class AsyncPrimarySSLConnection(AsyncPrimaryConnection, redis.asyncio.SSLConnection):
    """`AsyncPrimaryConnection` over TLS."""


def sentinel_enabled(settings: Settings) -> bool:
    """Whether the clients go through Redis Sentinel."""
    return bool(settings.redis_sentinel.hosts())


def primary_credentials(settings: Settings) -> dict[str, Any]:
    """The primary's username, password, database and TLS, from `redis_dsn()`."""
    parts = urlsplit(settings.redis_dsn())
    options: dict[str, Any] = {"db": int(parts.path.strip("/") or 0)}
    if parts.username:
        options["username"] = parts.username
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        options["ssl"] = True
    return options


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Options of the connections to the Sentinels themselves (auth, TLS, short timeouts)."""
    sentinel = settings.redis_sentinel
    options: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if sentinel.username:
        options["username"] = sentinel.username
    if sentinel.password is not None:
        options["password"] = sentinel.password.get_secret_value()
    if sentinel.tls:
        options["ssl"] = True
        if settings.redis_ca_file is not None:
            options["ssl_cert_reqs"] = "required"
            options["ssl_ca_certs"] = str(settings.redis_ca_file)
    return options


def sentinel_broker_url(settings: Settings) -> str:
    """The `sentinel://` URL of kombu: one per Sentinel, joined by `;`, carrying the primary's
    credentials and database (kombu gives the Sentinels' own in `sentinel_kwargs`).
    """
    options = primary_credentials(settings)
    user = quote(options.get("username", ""), safe="")
    password = options.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password is not None else ""
    auth = auth or (f"{user}@" if user else "")
    host_part = [f"[{h}]" if ":" in h else h for h, _ in settings.redis_sentinel.hosts()]
    ports = [p for _, p in settings.redis_sentinel.hosts()]
    return ";".join(
        f"sentinel://{auth}{host}:{port}/{options['db']}"
        for host, port in zip(host_part, ports, strict=True)
    )


def _sentinel_client(
    settings: Settings, options: dict[str, Any], retry: Any, **extra: Any
) -> "redis.Redis":
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        settings.redis_sentinel.hosts(), sentinel_kwargs=sentinel_kwargs(settings)
    )
    credentials = primary_credentials(settings)
    tls = credentials.pop("ssl", False)
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel.master_name,
        connection_class=PrimarySSLConnection if tls else PrimaryConnection,
        **{**credentials, **options, "retry": retry, **extra},
    )
    return client


def _async_sentinel_client(
    settings: Settings, options: dict[str, Any], retry: Any, **extra: Any
) -> "redis.asyncio.Redis":
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        settings.redis_sentinel.hosts(), sentinel_kwargs=sentinel_kwargs(settings)
    )
    credentials = primary_credentials(settings)
    tls = credentials.pop("ssl", False)
    client: redis.asyncio.Redis = sentinel.master_for(
        settings.redis_sentinel.master_name,
        connection_class=AsyncPrimarySSLConnection if tls else AsyncPrimaryConnection,
        **{**credentials, **options, "retry": retry, **extra},
    )
    return client


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


# The connection class redis-py picks for a URL's scheme -> ours, packing by hiredis.
_PACKING_CLASSES: dict[type[Any], type[Any]] = {
    redis.asyncio.Connection: AsyncConnection,
    redis.asyncio.SSLConnection: AsyncSSLConnection,
    redis.asyncio.UnixDomainSocketConnection: AsyncUnixConnection,
}


def _async_from_url(settings: Settings, **options: Any) -> "redis.asyncio.Redis":
    """`redis.asyncio.Redis.from_url(settings.redis_dsn(), **options)`, on the connection
    class of the URL's scheme that packs by hiredis. The pool is built here as `from_url`
    builds it, since the URL's options win over a `connection_class` given to `from_url`.
    """
    pool_options = {**options, **parse_url(settings.redis_dsn())}
    plain = pool_options.get("connection_class", redis.asyncio.Connection)
    pool_options["connection_class"] = _PACKING_CLASSES[plain]
    return redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(**pool_options))


def sync_client(settings: Settings, *, quick: bool = False) -> "redis.Redis":
    """A blocking client (workers, beat); it retries a command through a short outage.

    `quick` is for a caller that must answer fast instead (the exporter, within a scrape).
    """
    if quick:
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.05), retries=1)
        options = _options(settings, socket_timeout=2.0, connect_timeout=1.0)
    else:
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5)
        options = _options(settings, socket_timeout=10.0, connect_timeout=3.0)
    if sentinel_enabled(settings):
        return _sentinel_client(settings, options, retry)
    return redis.Redis.from_url(settings.redis_dsn(), retry=retry, **options)


def stream_client(
    settings: Settings, block_seconds: float, max_connections: int
) -> "redis.asyncio.Redis":
    """An asyncio client for blocking stream reads (job events): its socket timeout outlasts
    a `block_seconds` XREAD, so only a silent Redis, not a quiet job, times it out. The API
    caps its streams below `max_connections`.
    """
    from redis.asyncio.retry import Retry as AsyncRetry

    retry = AsyncRetry(ExponentialBackoff(cap=0.1, base=0.05), retries=1)
    options = _options(settings, socket_timeout=block_seconds + 2.0, connect_timeout=0.5)
    if sentinel_enabled(settings):
        return _async_sentinel_client(settings, options, retry, max_connections=max_connections)
    return _async_from_url(settings, retry=retry, max_connections=max_connections, **options)


def async_client(settings: Settings) -> "redis.asyncio.Redis":
    """An asyncio client (API) with tight timeouts: one retry, then the API answers 503.

    Worst case, a silent (blackholed) Redis costs two 0.6 s timeouts before the 503 (measured:
    about 1.3 s), within the 2-second bound clients are promised.
    """
    from redis.asyncio.retry import Retry as AsyncRetry

    retry = AsyncRetry(ExponentialBackoff(cap=0.1, base=0.05), retries=1)
    options = _options(settings, socket_timeout=0.6, connect_timeout=0.5)
    if sentinel_enabled(settings):
        return _async_sentinel_client(settings, options, retry)
    return _async_from_url(settings, retry=retry, **options)
