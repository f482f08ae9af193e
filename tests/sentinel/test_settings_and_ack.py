"""Sentinel settings reach every client (API, workers, beat, exporter, CLI), the managed
durability mode, and replicated acknowledgement against a real primary and replica."""

import asyncio
from pathlib import Path
from unittest import mock

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from celery import Celery
from kombu import Connection
from kombu.common import ignore_errors

from conveyor.beat.app import create_beat
from conveyor.celery_config import SENTINEL_TRANSPORT, TRANSPORT, celery_config
from conveyor.core.catalog import load_catalog
from conveyor.core.durability import UnsafeRedisError, check_durability
from conveyor.core.redis import async_client, sentinel_broker_url, stream_client, sync_client
from conveyor.core.settings import DurabilityCheck, Settings
from conveyor.jobstore.aio import AsyncJobStore
from conveyor.jobstore.results import AcceptVerdict
from conveyor.jobstore.submission import Submission
from conveyor.worker.transport import (
    ReliableChannel,
    ReliableSentinelChannel,
    ReliableSentinelTransport,
    ReliableTransport,
)
from tests.support.processes import RedisServer, start_redis, wait_until

SENTINEL_ENV = {
    "CONVEYOR_REDIS_URL": "redis://:p%40ss@ignored:1/3",
    "CONVEYOR_REDIS_SENTINEL__ADDRESSES": "s1:26379, s2:26380,s3",
    "CONVEYOR_REDIS_SENTINEL__MASTER_NAME": "main",
    "CONVEYOR_REDIS_SENTINEL__PASSWORD": "sentinel-secret",
}


@pytest.fixture
def sentinel_settings() -> Settings:
    with mock.patch.dict("os.environ", SENTINEL_ENV):
        return Settings()


def test_sentinel_settings_from_the_environment(sentinel_settings: Settings) -> None:
    sentinel = sentinel_settings.redis_sentinel
    assert sentinel.hosts() == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert sentinel.master_name == "main"
    assert Settings().redis_sentinel.hosts() == []


def test_every_client_is_sentinel_managed(sentinel_settings: Settings) -> None:
    sync = sync_client(sentinel_settings)
    quick = sync_client(sentinel_settings, quick=True)
    for client in (sync, quick):
        pool = client.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
        assert pool.service_name == "main"
        assert pool.connection_kwargs["password"] == "p@ss"
        assert pool.connection_kwargs["db"] == 3
        manager = pool.sentinel_manager
        assert [s.connection_pool.connection_kwargs["host"] for s in manager.sentinels] == [
            "s1", "s2", "s3"
        ]  # fmt: skip
        assert manager.sentinels[0].connection_pool.connection_kwargs["password"] == (
            "sentinel-secret"
        )
    for aclient in (async_client(sentinel_settings), stream_client(sentinel_settings, 5, 10)):
        assert isinstance(aclient.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
        assert aclient.connection_pool.service_name == "main"
    standalone = sync_client(Settings())
    assert not isinstance(standalone.connection_pool, redis.sentinel.SentinelConnectionPool)


def test_workers_and_the_api_revoke_use_the_reliable_sentinel_transport(
    sentinel_settings: Settings,
) -> None:
    config = celery_config(sentinel_settings)
    assert config["broker_transport"] == SENTINEL_TRANSPORT
    assert config["broker_url"] == sentinel_broker_url(sentinel_settings)
    assert str(config["broker_url"]).split(";") == [
        "sentinel://:p%40ss@s1:26379/3", "sentinel://:p%40ss@s2:26380/3",
        "sentinel://:p%40ss@s3:26379/3",
    ]  # fmt: skip
    options = config["broker_transport_options"]
    assert isinstance(options, dict)
    assert options["master_name"] == "main"
    assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
    assert celery_config(Settings())["broker_transport"] == TRANSPORT
    # The Sentinel channel keeps the reliable consumption and reads both families of options.
    assert ReliableSentinelTransport.Channel is ReliableSentinelChannel
    assert {"master_name", "sentinel_kwargs", "conveyor_key_prefix"} <= set(
        ReliableSentinelChannel.from_transport_options
    )
    assert ReliableSentinelChannel._brpop_read.__qualname__.startswith("ReliableChannel")


def test_a_reconnect_to_the_next_sentinel_keeps_the_reliable_transport(
    sentinel_settings: Settings,
) -> None:
    """kombu's failover switch to the next `sentinel://` URL takes the transport from the
    URL's scheme: it must still be the reliable one (with kombu's stock Sentinel transport,
    every worker consumed with BRPOP after its first reconnect, and a kill -9 of the primary
    lost the messages whose BRPOP replies died with it).
    """
    app = Celery("switch", set_as_current=False)
    app.conf.update(celery_config(sentinel_settings))
    connection = app.connection_for_read()
    try:
        assert isinstance(connection.transport, ReliableSentinelTransport)
        for _ in range(3):  # round-robin through every Sentinel URL, back to the first
            connection.maybe_switch_next()
            assert isinstance(connection.transport, ReliableSentinelTransport)
            assert connection.transport.Channel is ReliableSentinelChannel
    finally:
        connection.release()


def test_a_channel_whose_connection_is_gone_fails_as_a_connection_error(
    redis_server: RedisServer,
) -> None:
    """Celery closes its channel after a lost connection; the close restores the unacked
    deliveries, which needs a pool. With the connection already gone kombu's pool builder
    raised AttributeError (`'NoneType' object has no attribute 'hostname'`), an unrecoverable
    error: a `kill -9` of a standalone Redis ended 2 of 3 workers (the standalone comparison
    test). As a connection error, Celery ignores it on close and reconnects. The Sentinel
    channel shares the guard (a failover closing the connection did the same)."""
    assert ReliableSentinelChannel._get_pool is ReliableChannel._get_pool
    connection = Connection(redis_server.url(), transport=ReliableTransport)
    channel = connection.channel()
    channel.connection.client = None  # as after the connection was closed under it
    with pytest.raises(redis.exceptions.ConnectionError):
        channel.qos.restore_unacked()
    assert redis.exceptions.ConnectionError in ReliableTransport.connection_errors
    assert ignore_errors(channel, channel.close) is None  # what Celery does on the error


def test_beat_leader_lock_follows_the_sentinels(sentinel_settings: Settings) -> None:
    app, _ = create_beat(sentinel_settings, load_catalog([]))
    assert app.conf.redbeat_redis_url.startswith("redis-sentinel://")
    options = app.conf.redbeat_redis_options
    assert options["sentinels"] == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert options["service_name"] == "main"
    assert options["password"] == "p@ss"
    assert options["db"] == 3


class _Refusing:
    def info(self, _: str) -> dict[str, str]:
        raise redis.ResponseError("unknown command 'INFO'")

    def config_get(self, _: str) -> dict[str, str]:
        raise redis.ResponseError("unknown command 'CONFIG'")


class _Evicting:
    def info(self, _: str) -> dict[str, str]:
        return {"redis_version": "7.2.4"}

    def config_get(self, name: str) -> dict[str, str]:
        return {name: {"maxmemory-policy": "volatile-lru", "appendonly": "no"}[name]}


def test_managed_mode_trusts_a_redis_whose_config_is_disabled() -> None:
    with pytest.raises(UnsafeRedisError, match="managed"):
        check_durability(_Refusing(), DurabilityCheck.REFUSE)  # type: ignore[arg-type]
    assert check_durability(_Refusing(), DurabilityCheck.MANAGED) == []  # type: ignore[arg-type]
    # Still refused where CONFIG can read an eviction policy; AOF is the provider's business.
    with pytest.raises(UnsafeRedisError, match="maxmemory-policy") as refused:
        check_durability(_Evicting(), DurabilityCheck.MANAGED)  # type: ignore[arg-type]
    assert "appendonly" not in str(refused.value)


class _Old(_Evicting):
    def info(self, _: str) -> dict[str, str]:
        return {"redis_version": "6.2.14"}


def test_a_redis_older_than_7_is_refused_whatever_the_mode() -> None:
    for mode in DurabilityCheck:
        with pytest.raises(UnsafeRedisError, match=r"6\.2\.14 is too old.*>= 7\.0"):
            check_durability(_Old(), mode)  # type: ignore[arg-type]


def _submit(settings: Settings, port: int, key: str) -> tuple[AcceptVerdict, str, int]:
    spec = load_catalog([])["demo.echo"]
    submission = Submission.of(spec, tenant="t1", args={"payload": 1}, idempotency_key=key)

    async def run() -> tuple[AcceptVerdict, str, int]:
        client = redis.asyncio.Redis(port=port, decode_responses=True)
        try:
            result = await AsyncJobStore(client, settings).submit(spec, submission)
            return result.verdict, result.job_id, result.replicas
        finally:
            await client.aclose()

    return asyncio.run(run())


def _ack(replicas: int, timeout_ms: int = 100) -> Settings:
    env = {"CONVEYOR_REDIS_REPLICATION__ACK_REPLICAS": str(replicas),
           "CONVEYOR_REDIS_REPLICATION__ACK_TIMEOUT_MS": str(timeout_ms)}  # fmt: skip
    with mock.patch.dict("os.environ", env):
        return Settings()


def test_replicated_acknowledgement_refuses_until_a_replica_has_the_job(tmp_path: Path) -> None:
    primary: RedisServer = start_redis(tmp_path / "primary")
    replica: RedisServer | None = None
    try:
        # No replica: recorded, but not acknowledged; the retry finds the same job.
        verdict, job_id, confirmed = _submit(_ack(1), primary.port, "k1")
        assert (verdict, confirmed) == (AcceptVerdict.NOT_REPLICATED, 0)
        assert _submit(_ack(1), primary.port, "k1")[:2] == (AcceptVerdict.NOT_REPLICATED, job_id)
        assert _submit(_ack(0), primary.port, "k2")[0] is AcceptVerdict.CREATED
        replica = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))

        def linked() -> bool:
            # Online as the primary sees it (WAIT counts only those), not only as the replica
            # does: the replica reports its link up as soon as it has loaded the snapshot.
            info = primary.client().info("replication")
            return (
                replica is not None
                and replica.client().info("replication").get("master_link_status") == "up"
                and info.get("slave0", {}).get("state") == "online"
            )

        wait_until(linked, 20, "the replica to sync")
        # The retry under the same key: acknowledged now, still one job, and on the replica.
        # A generous WAIT: a replica's acknowledgement can take longer than 100 ms on a busy
        # machine, and these two must be confirmed (the refusals keep 100 ms).
        patient = _ack(1, timeout_ms=10_000)
        assert _submit(patient, primary.port, "k1")[:2] == (AcceptVerdict.EXISTING, job_id)
        assert replica.client().exists(f"conveyor:job:{job_id}") == 1
        verdict, new_id, confirmed = _submit(patient, primary.port, "k3")
        assert (verdict, confirmed) == (AcceptVerdict.CREATED, 0)
        assert replica.client().exists(f"conveyor:job:{new_id}") == 1
        assert _submit(_ack(2), primary.port, "k4")[0] is AcceptVerdict.NOT_REPLICATED
    finally:
        for server in (replica, primary):
            if server is not None:
                server.process.terminate()
                server.process.wait(10)
