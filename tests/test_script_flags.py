"""The job store's scripts declare what they do (Redis 7 script flags), so that Redis refuses
a write script before it reads anything where it must not write: on a replica (a demoted
primary a worker's connection still points at), on a primary without its good replicas
(`min-replicas-to-write`: an isolated old primary), and out of memory.

Without the flags a script runs until its first write: one that decided from what it read
and wrote nothing was answered by a stale node. The Sentinel fault test found it: a worker
whose job-store connection still pointed at the demoted old primary was told "no such job"
by `start` and dropped the message of a job accepted on the new primary.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor.core.settings import Settings
from conveyor.exporter.collector import BrokerCollector, read_demand
from conveyor.jobstore import scripts
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.runs import StartVerdict
from conveyor.jobstore.store import JobStore
from tests.support.processes import RedisServer, start_redis, wait_until

# Every script that writes. `read` only reads (an API read may be served by any node).
WRITE_SCRIPTS = [name for name in scripts.JOB_SCRIPTS if name != "read"]


def _script(name: str) -> scripts.Lua:
    found: scripts.Lua = getattr(scripts, name.upper())
    return found


@pytest.fixture(scope="module")
def primary_and_replica(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, RedisServer]]:
    tmp_path = tmp_path_factory.mktemp("replication")
    primary = start_redis(tmp_path / "primary")
    replica = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    try:
        wait_until(
            lambda: replica.client().info("replication").get("master_link_status") == "up",
            20,
            "the replica to sync",
        )
        yield primary, replica
    finally:
        for server in (replica, primary):
            server.process.terminate()
            server.process.wait(10)


@pytest.mark.parametrize("name", WRITE_SCRIPTS)
def test_a_write_script_is_refused_by_a_replica_before_it_runs(
    primary_and_replica: tuple[RedisServer, RedisServer], name: str
) -> None:
    _, replica = primary_and_replica
    # No arguments at all: a script that ran would fail in Lua, not with READONLY.
    with pytest.raises(redis.exceptions.ReadOnlyError):
        _script(name).run(replica.client(), [])


def test_the_read_script_is_answered_by_a_replica(
    primary_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = primary_and_replica
    primary.client().hset("conveyor:job:j1", mapping={"tenant": "t1", "state": "queued"})
    wait_until(lambda: replica.client().exists("conveyor:job:j1"), 10, "replication")
    assert scripts.READ.run(replica.client(), ["conveyor", "j1", "t1"])[:2] == ["tenant", "t1"]


def test_a_start_on_a_demoted_primary_is_a_broker_error_not_a_skip(
    primary_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    """The job is unknown to the replica: `start` must not answer "skip" (the worker would
    ack the message and the job would stay queued for ever); the refusal is an error the
    worker hands the message back on.
    """
    _, replica = primary_and_replica
    store = JobStore(replica.client(), Settings())
    with pytest.raises(redis.exceptions.ReadOnlyError):
        store.start("accepted-on-the-new-primary", 1, owner="w:1", delivery="tag")


def test_an_isolated_primary_refuses_a_start_before_it_reads(tmp_path: Path) -> None:
    """`min-replicas-to-write` with no replica: what an isolated old primary is."""
    isolated = start_redis(tmp_path / "isolated", "--min-replicas-to-write", "1")
    try:
        store = JobStore(isolated.client(), Settings())
        with pytest.raises(redis.exceptions.ResponseError, match="NOREPLICAS"):
            store.start("unknown-here", 1, owner="w:1", delivery="tag")
        # Without the setting the same call is a plain skip (the job is unknown).
        isolated.client().config_set("min-replicas-to-write", 0)
        assert store.start("unknown-here", 1, owner="w:1", delivery="tag").verdict is (
            StartVerdict.SKIP
        )
    finally:
        isolated.process.terminate()
        isolated.process.wait(10)


def test_out_of_memory_refuses_a_write_script_whole_but_not_a_purge(tmp_path: Path) -> None:
    """Refused before it runs, so never half applied; the purge of dead letters frees memory
    and must run when Redis is full.
    """
    full = start_redis(tmp_path / "full", "--maxmemory-policy", "noeviction")
    try:
        client = full.client()
        client.zadd("conveyor:dead", {"j1": 1})
        client.hset("conveyor:job:j1", mapping={"state": "dead", "tenant": "t1"})
        client.config_set("maxmemory", 1)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            JobStore(client, Settings()).start("j1", 1, owner="w:1", delivery="tag")
        assert scripts.PURGE.run(client, ["conveyor", 60, "j1"]) == [1, 0]
        # The exporter's primary check answers too: metrics matter most when Redis is full.
        assert scripts.PRIMARY.run(client, []) == 1
    finally:
        full.process.terminate()
        full.process.wait(10)


def test_the_autoscaler_signal_is_never_read_from_a_demoted_node(
    primary_and_replica: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """The exporter only reads, so nothing used to refuse it: pointed at a demoted (or
    isolated) old primary it served that node's frozen demand to KEDA for as long as its
    connection lived. It now asks the node to confirm it is the primary on every read.
    """
    primary, replica = primary_and_replica
    keys = KeySpace("conveyor")
    assert read_demand(primary.client(), keys, "default").demand == 0
    with pytest.raises(redis.exceptions.ReadOnlyError):
        read_demand(replica.client(), keys, "default")
    families = {m.name: m for m in BrokerCollector(replica.client(), keys, 30).collect()}
    assert [s.value for s in families["conveyor_exporter_up"].samples] == [0]
    isolated = start_redis(tmp_path / "isolated", "--min-replicas-to-write", "1")
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="NOREPLICAS"):
            read_demand(isolated.client(), keys, "default")
    finally:
        isolated.process.terminate()
        isolated.process.wait(10)
