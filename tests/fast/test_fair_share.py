"""Fair share within a tier (conveyor.jobstore.fairq): claims go round the tenants with jobs
waiting, by weight, whatever each one's backlog; every way a message enters a tier keeps one
ready token per ready message.
"""

import contextlib
import socket
from collections import Counter
from itertools import pairwise
from pathlib import Path

import orjson
import pytest
import redis
from kombu import Connection
from kombu import Queue as KombuQueue
from kombu.transport.redis import Channel

from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore import fairq
from conveyor.jobstore.submission import Submission
from conveyor.worker.transport import ReliableTransport
from tests.fast.harness import CATALOG, KEYS, InProcessApi, InProcessWorker, serve, settings_for
from tests.support.auth import TEAM_A_KEY, TEAM_B_KEY, TEST_KEYS, keys_document


async def submit_many(api: InProcessApi, key: str, count: int) -> list[str]:
    async with api.client(key) as http:
        ids = []
        for n in range(count):
            response = await http.post(
                "/v1/jobs", json={"task": "demo.echo", "args": {"payload": {"n": n}}}
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        return ids


def tenants_of(worker: InProcessWorker, claims: int) -> list[str]:
    return [worker.take("default").headers["conveyor_tenant"] for _ in range(claims)]


def assert_one_token_per_ready_message(client: "redis.Redis", queue: str = "default") -> None:
    ready = fairq.ready_messages(client, KEYS, queue)
    assert client.llen(KEYS.queue(queue)) == len(ready)


async def test_a_backlog_never_delays_another_tenants_next_job(
    settings: Settings, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    async with serve(settings) as api:
        await submit_many(api, TEAM_A_KEY, 60)
        assert tenants_of(worker, 20) == ["team-a"] * 20
        (b_job,) = await submit_many(api, TEAM_B_KEY, 1)
        # B joins at the tier's clock: its job is the very next claim, 40 of A's still waiting.
        assert worker.take("default").job_id == b_job
        assert_one_token_per_ready_message(redis_client)
        await submit_many(api, TEAM_B_KEY, 10)
        # Both have jobs waiting: they alternate.
        taken = tenants_of(worker, 10)
        assert Counter(taken) == {"team-a": 5, "team-b": 5}
        assert all(one != next_one for one, next_one in pairwise(taken)), taken
    assert_one_token_per_ready_message(redis_client)


async def test_each_tenant_is_served_oldest_first(
    settings: Settings, worker: InProcessWorker
) -> None:
    async with serve(settings) as api:
        a_jobs = await submit_many(api, TEAM_A_KEY, 5)
        b_jobs = await submit_many(api, TEAM_B_KEY, 5)
    taken = [worker.take("default").job_id for _ in range(10)]
    assert [j for j in taken if j in a_jobs] == a_jobs
    assert [j for j in taken if j in b_jobs] == b_jobs


async def test_weights_from_the_keys_file_divide_claims(
    tmp_path: Path, redis_url: str, worker: InProcessWorker
) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(keys_document(TEST_KEYS, tenants={"team-a": {"weight": 3}}))
    async with serve(settings_for(redis_url, auth={"keys_file": keys_file})) as api:
        await submit_many(api, TEAM_A_KEY, 60)
        await submit_many(api, TEAM_B_KEY, 60)
    counts = Counter(tenants_of(worker, 40))
    assert counts == {"team-a": 30, "team-b": 10}


async def test_a_restored_delivery_is_its_tenants_next_and_keeps_one_token(
    settings: Settings, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    async with serve(settings) as api:
        a_jobs = await submit_many(api, TEAM_A_KEY, 3)
    connection = Connection(settings.redis_dsn(), transport=ReliableTransport)
    try:
        channel = connection.default_channel
        message = channel.basic_get("default", no_ack=False)
        assert message.headers["id"] == a_jobs[0]
        assert redis_client.hexists(Channel.unacked_key, message.delivery_tag)
        assert_one_token_per_ready_message(redis_client)
        channel.qos.restore_unacked()  # a worker shutting down hands its delivery back
    finally:
        connection.release()
    assert not redis_client.hexists(Channel.unacked_key, message.delivery_tag)
    assert_one_token_per_ready_message(redis_client)
    assert [worker.take("default").job_id for _ in range(3)] == a_jobs
    assert redis_client.llen(KEYS.queue("default")) == 0


def test_promoted_repaired_and_published_messages_join_their_tenants_list(
    worker: InProcessWorker, redis_client: "redis.Redis", settings: Settings
) -> None:
    spec = CATALOG["demo.echo"]
    delayed = worker.store.submit(spec, Submission.of(spec, tenant="team-b", args={},
                                                      delay_seconds=60)).job_id  # fmt: skip
    worker.fast_forward(delayed)
    assert worker.promote() == 1
    assert fairq.ready_count(redis_client, KEYS, "default", "team-b") == 1
    # A publish through kombu (not Conveyor's path) joins the fair queue too.
    connection = Connection(settings.redis_dsn(), transport=ReliableTransport)
    try:
        producer = connection.Producer()
        body = orjson.loads(fairq.ready_messages(redis_client, KEYS, "default")[0])
        headers = {**body["headers"], "id": "p1"}
        producer.publish(b"[[], {}, {}]", routing_key="default", headers=headers,
                         content_type="application/json", content_encoding="utf-8")  # fmt: skip
    finally:
        connection.release()
    assert fairq.ready_count(redis_client, KEYS, "default", "team-b") == 2
    assert_one_token_per_ready_message(redis_client)
    assert {worker.take("default").job_id for _ in range(2)} == {delayed, "p1"}


def test_purging_a_tier_through_kombu_is_refused(settings: Settings) -> None:
    connection = Connection(settings.redis_dsn(), transport=ReliableTransport)
    try:
        channel = connection.default_channel
        with pytest.raises(NotImplementedError, match="cancel its jobs"):
            channel.queue_purge("default")
    finally:
        connection.release()


def test_a_consumer_of_several_tiers_claims_from_each(
    worker: InProcessWorker, redis_client: "redis.Redis", settings: Settings
) -> None:
    """A Celery app consuming two tiers through the transport: each poll waits on one tier
    in turn, and a ready token is always claimed, never delivered as a message."""
    spec = CATALOG["demo.echo"]
    submitted = {worker.store.submit(spec, Submission.of(spec, tenant="t", args={},
                                                         priority=Queue(tier))).job_id
                 for tier in ("high", "default", "default") }  # fmt: skip
    received: list[str] = []
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        queues = [KombuQueue(tier, routing_key=tier) for tier in ("high", "default")]
        with connection.Consumer(queues, accept=["json"],
                                 on_message=lambda m: (received.append(m.headers["id"]),
                                                       m.ack())):  # fmt: skip
            for _ in range(20):
                if len(received) == 3:
                    break
                with contextlib.suppress(TimeoutError, socket.timeout):
                    connection.drain_events(timeout=1)
    assert set(received) == submitted
    assert redis_client.hlen(Channel.unacked_key) == 0
    assert redis_client.llen(KEYS.queue("default")) == redis_client.llen(KEYS.queue("high")) == 0
