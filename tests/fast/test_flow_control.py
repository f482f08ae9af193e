"""Flow control at claim time (claim.lua, release.lua, flow.lua): concurrency limits per
tenant and tier, per task and per concurrency key, and pause/resume of a tier, task or tenant.
A job over a limit waits without a worker slot and without polling: its token is parked (or
spent on it as it moves to its gate's waiting list) until a slot frees or a resume.
"""

import json
from collections.abc import Iterator

import httpx
import pytest
import redis
from kombu import Connection
from kombu.asynchronous import Hub
from kombu.transport.redis import Channel

from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.jobstore import fairq
from conveyor.jobstore.fairq import FlowKind
from conveyor.jobstore.keys import key_gate, task_gate
from conveyor.worker.transport import ReliableTransport
from tests.fast.harness import KEYS, InProcessApi, InProcessWorker, settings_for
from tests.support.auth import TEAM_A_KEY


def tokens_and_messages(client: "redis.Redis", queue: str = "default") -> tuple[int, int]:
    """(tokens in the tier's list + parked, messages in its tenants' lists): always equal."""
    tokens = client.llen(KEYS.queue(queue)) + client.llen(KEYS.fair_parked(queue))
    return tokens, len(fairq.ready_messages(client, KEYS, queue))


@pytest.fixture
def limited_worker(redis_url: str) -> Iterator[InProcessWorker]:
    """A worker whose tenants may run 2 jobs at once per tier."""
    settings = settings_for(redis_url, flow={"tenant_concurrency_per_tier": 2})
    client = sync_client(settings)
    yield InProcessWorker(client, settings)
    client.close()


def test_a_tenant_at_its_limit_waits_without_a_slot_and_another_runs(
    limited_worker: InProcessWorker,
) -> None:
    worker = limited_worker
    a_jobs = worker.submit_as("team-a", count=5)
    (b_job,) = worker.submit_as("team-b")
    claimed = worker.claim_all()
    # A runs 2 (its limit), B its one; A's other 3 wait, their tokens parked (no polling).
    assert sorted(job for job, _ in claimed) == sorted([*a_jobs[:2], b_job])
    assert worker.redis.llen(KEYS.queue("default")) == 0
    assert worker.redis.llen(KEYS.fair_parked("default")) == 3
    assert tokens_and_messages(worker.redis) == (3, 3)
    assert worker.claim("default") is None, "no token: nothing more runs until a slot frees"

    # One of A's finishes: exactly one of A's waiting jobs becomes claimable, the next oldest.
    worker.ack(next(tag for job, tag in claimed if job == a_jobs[0]))
    assert worker.redis.llen(KEYS.queue("default")) == 1
    (again,) = worker.claim_all()
    assert again[0] == a_jobs[2]
    assert worker.claim_all() == []
    # Raising the limit (the keys file's own) frees A's backlog at the beat leader's sweep.
    worker.redis.hset(KEYS.fair_limits, "team-a", 10)
    fairq.sweep(worker.redis, KEYS, Channel.unacked_key, tenant_limit=2)
    assert sorted(job for job, _ in worker.claim_all()) == sorted(a_jobs[3:])
    assert tokens_and_messages(worker.redis) == (0, 0)


def test_a_task_limit_holds_its_jobs_at_the_gate_and_lets_one_in_per_free_slot(
    worker: InProcessWorker,
) -> None:
    jobs = worker.submit_as("team-a", "fast.limited", count=4)
    (other,) = worker.submit_as("team-a")
    claimed = worker.claim_all()
    assert sorted(job for job, _ in claimed) == sorted([*jobs[:2], other])
    gate = KEYS.gate_waiting(task_gate("fast.limited"))
    assert worker.redis.llen(gate) == 2, "two wait at the task's gate, with no token"
    assert tokens_and_messages(worker.redis) == (0, 0)
    assert int(worker.redis.hget(KEYS.gate_active, task_gate("fast.limited"))) == 2

    worker.ack(claimed[0][1])  # one finishes: one waiting job goes back with a new token
    assert worker.redis.llen(gate) == 1
    (next_one,) = worker.claim_all()
    assert next_one[0] == jobs[2]
    assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) == "2"


def test_a_concurrency_key_limits_only_the_jobs_sharing_it(worker: InProcessWorker) -> None:
    first, second = worker.submit_as("team-a", "fast.keyed", count=2, concurrency_key="cust-1")
    (elsewhere,) = worker.submit_as("team-a", "fast.keyed", concurrency_key="cust-2")
    (other_tenant,) = worker.submit_as("team-b", "fast.keyed", concurrency_key="cust-1")
    claimed = dict(worker.claim_all())
    assert set(claimed) == {first, elsewhere, other_tenant}, "keys are per tenant"
    waiting = KEYS.gate_waiting(key_gate("team-a", "fast.keyed", "cust-1"))
    assert worker.redis.llen(waiting) == 1
    worker.ack(claimed[first])
    assert [job for job, _ in worker.claim_all()] == [second]


def test_a_retried_job_keeps_its_task_and_key_limits(worker: InProcessWorker) -> None:
    """A retry's message carries the limits its first message had: it waits at its key's
    gate like any job of that key (its message once lost them, and ran past the limit)."""
    (flaky,) = worker.submit_as("team-a", "fast.keyed_flaky", concurrency_key="cust-1")
    first = worker.run_next("default")  # fails: its retry waits in the delayed set
    (holder,) = worker.submit_as("team-a", "fast.keyed_flaky", concurrency_key="cust-1")
    claimed = worker.claim("default")
    assert claimed is not None
    assert claimed[0].job_id == holder, "the key's one slot is taken"
    worker.fast_forward(flaky)
    assert worker.promote() == 1
    retried = worker.queued("default")[0]
    assert retried.job_id == flaky
    flow = ("conveyor_task_limit", "conveyor_concurrency_key", "conveyor_key_limit")
    assert (
        [retried.headers[h] for h in flow] == [first.headers[h] for h in flow] == [2, "cust-1", 1]
    )
    assert worker.claim("default") is None, "the retry waits at its key's gate"
    waiting = KEYS.gate_waiting(key_gate("team-a", "fast.keyed_flaky", "cust-1"))
    assert worker.redis.llen(waiting) == 1
    worker.ack(claimed[1])  # the holder finishes: the retry takes the key's slot
    assert [job for job, _ in worker.claim_all()] == [flaky]


def test_a_paused_tier_parks_its_tokens_and_resume_puts_every_one_back(
    worker: InProcessWorker,
) -> None:
    jobs = worker.submit_as("team-a", count=3)
    assert fairq.pause(worker.redis, KEYS, FlowKind.TIER, "default")
    assert not fairq.pause(worker.redis, KEYS, FlowKind.TIER, "default"), "already paused"
    assert worker.claim_all() == []
    assert worker.redis.llen(KEYS.fair_parked("default")) == 3
    assert fairq.paused(worker.redis, KEYS) == [(FlowKind.TIER, "default")]
    assert fairq.resume(worker.redis, KEYS, FlowKind.TIER, "default")
    assert not fairq.resume(worker.redis, KEYS, FlowKind.TIER, "default"), "not paused now"
    assert [job for job, _ in worker.claim_all()] == jobs


def test_a_paused_tenant_is_held_while_others_run(worker: InProcessWorker) -> None:
    a_jobs = worker.submit_as("team-a", count=2)
    fairq.pause(worker.redis, KEYS, FlowKind.TENANT, "team-a")
    b_jobs = worker.submit_as("team-b", count=2)
    assert sorted(job for job, _ in worker.claim_all()) == sorted(b_jobs)
    assert tokens_and_messages(worker.redis) == (2, 2)
    fairq.resume(worker.redis, KEYS, FlowKind.TENANT, "team-a")
    assert [job for job, _ in worker.claim_all()] == a_jobs


def test_a_paused_task_waits_at_its_gate_until_resumed(worker: InProcessWorker) -> None:
    fairq.pause(worker.redis, KEYS, FlowKind.TASK, "demo.echo")
    echo = worker.submit_as("team-a", count=2)
    steps = worker.submit_as("team-a", "fast.steps")
    assert [job for job, _ in worker.claim_all()] == steps
    assert worker.redis.llen(KEYS.gate_waiting(task_gate("demo.echo"))) == 2
    fairq.resume(worker.redis, KEYS, FlowKind.TASK, "demo.echo")
    assert [job for job, _ in worker.claim_all()] == echo


def test_slots_whose_release_was_lost_are_released_by_the_sweep(
    limited_worker: InProcessWorker,
) -> None:
    """A failover can lose an ack's release (or the unacked record with it): the beat
    leader's sweep releases every slot whose delivery is no longer unacked."""
    worker = limited_worker
    jobs = worker.submit_as("team-a", count=3)
    claimed = worker.claim_all()
    assert len(claimed) == 2
    for _, tag in claimed:  # acked, but the release never ran
        worker.redis.hdel(Channel.unacked_key, tag)
    assert fairq.sweep(worker.redis, KEYS, Channel.unacked_key, tenant_limit=2) == 2
    assert worker.redis.hlen(KEYS.slots) == 0
    assert [job for job, _ in worker.claim_all()] == jobs[2:]


def test_a_restored_delivery_gives_its_slots_back(
    settings: Settings, worker: InProcessWorker
) -> None:
    worker.submit_as("team-a", "fast.limited", count=3)
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        channel = connection.default_channel
        first = channel.basic_get("default", no_ack=False)
        assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) == "1"
        channel.qos.restore_unacked()  # a worker shutting down hands it back
    assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) is None
    assert worker.redis.hlen(KEYS.slots) == 0
    ids = [job for job, _ in worker.claim_all()]
    assert ids[0] == first.headers["id"]
    assert len(ids) == 2


async def test_admins_pause_list_and_resume_over_the_api(
    api: InProcessApi, redis_client: "redis.Redis"
) -> None:
    async with api.client() as admin, api.client(TEAM_A_KEY) as tenant:
        assert (await admin.put("/v1/admin/pauses/tier/low")).status_code == 201
        assert (await admin.put("/v1/admin/pauses/tier/low")).status_code == 200, "idempotent"
        assert (await admin.put("/v1/admin/pauses/task/demo.echo")).status_code == 201
        assert (await admin.put("/v1/admin/pauses/tenant/team-b")).status_code == 201
        listed = (await admin.get("/v1/admin/pauses")).json()["paused"]
        assert listed == [{"kind": "task", "name": "demo.echo"},
                          {"kind": "tenant", "name": "team-b"},
                          {"kind": "tier", "name": "low"}]  # fmt: skip
        assert fairq.paused(redis_client, KEYS)[0] == (FlowKind.TASK, "demo.echo")
        # Only admins; a name that could never be paused is a 404; resuming twice too.
        assert (await tenant.put("/v1/admin/pauses/tier/high")).status_code == 403
        assert (await tenant.get("/v1/admin/pauses")).status_code == 403
        for unknown in ("tier/urgent", "task/no.such", "tenant/Bad%20Name", "queue/low"):
            answer = await admin.put(f"/v1/admin/pauses/{unknown}")
            assert answer.status_code == 404
            assert answer.json()["type"] == "urn:conveyor:problem:unknown-pause-target"
        assert (await admin.delete("/v1/admin/pauses/tier/low")).status_code == 204
        missing = await admin.delete("/v1/admin/pauses/tier/low")
        assert missing.status_code == 404
        assert missing.json()["type"] == "urn:conveyor:problem:not-paused"
        assert len((await admin.get("/v1/admin/pauses")).json()["paused"]) == 2


async def test_a_concurrency_key_is_accepted_only_by_a_task_that_limits_keys(
    client: httpx.AsyncClient, redis_client: "redis.Redis"
) -> None:
    keyed = {"task": "fast.keyed", "args": {"n": 1}, "concurrency_key": "customer-1"}
    accepted = await client.post("/v1/jobs", json=keyed)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["concurrency_key"] == "customer-1"
    (message,) = [json.loads(m) for m in fairq.ready_messages(redis_client, KEYS, "default")]
    assert message["headers"]["conveyor_concurrency_key"] == "customer-1"
    assert message["headers"]["conveyor_key_limit"] == 1
    unkeyed = await client.post("/v1/jobs", json={**keyed, "task": "demo.echo", "args": {}})
    assert unkeyed.status_code == 422
    assert "concurrency_key" in unkeyed.text
    bad = await client.post("/v1/jobs", json={**keyed, "concurrency_key": "a b\nc"})
    assert bad.status_code == 422


def test_acks_release_their_slots_in_the_same_round_trip(
    settings: Settings, worker: InProcessWorker
) -> None:
    """The first ack of a channel loads the release script; later ones queue it by SHA in
    the ack's own pipeline. Both release, and a NOSCRIPT (a fresh primary) falls back."""
    worker.submit_as("team-a", "fast.limited", count=4)
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        channel = connection.default_channel
        for round_ in range(3):
            first, second = (channel.basic_get("default", no_ack=False) for _ in range(2))
            assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) == "2"
            if round_ == 2:
                worker.redis.script_flush()  # as after a failover to a primary without it
            first.ack()
            second.ack()
            assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) is None
            assert worker.redis.hlen(KEYS.slots) == 0
            worker.submit_as("team-a", "fast.limited", count=2)


def test_on_an_event_loop_acks_are_written_together_at_the_next_tick(
    settings: Settings, worker: InProcessWorker
) -> None:
    """The acks of one round of the event loop go to Redis in one round trip at the start of
    the next (the slots released with them); the deliveries are let go of at once. A channel
    closed with acks pending writes them first."""
    worker.submit_as("team-a", "fast.limited", count=2)
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        hub = Hub()
        connection.transport.register_with_event_loop(connection.connection, hub)
        channel = connection.default_channel
        messages = [channel.basic_get("default", no_ack=False) for _ in range(2)]
        assert worker.redis.hlen(Channel.unacked_key) == 2
        assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) == "2"
        messages[0].ack()
        qos = channel.qos
        assert len(qos._delivered) - len(qos._dirty) == 1  # let go of at once: a free slot
        assert worker.redis.hlen(Channel.unacked_key) == 2  # nothing written yet
        assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) == "2"
        for tick in list(hub.on_tick):
            tick()
        assert worker.redis.hlen(Channel.unacked_key) == 1
        assert worker.redis.zcard(Channel.unacked_index_key) == 1
        assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) == "1"
        messages[1].ack()
        assert worker.redis.hlen(Channel.unacked_key) == 1
        channel.close()
        assert worker.redis.hlen(Channel.unacked_key) == 0
        assert worker.redis.hlen(KEYS.slots) == 0
        hub.close()


def test_an_ack_after_the_connection_was_collected_never_ends_the_worker(
    settings: Settings, worker: InProcessWorker
) -> None:
    """A job that ran across a reconnect finishes on a channel Celery has collected (its
    `connection` gone): the ack is written, or is a connection error, which Celery logs; never an
    AttributeError, which ended the worker (found by review)."""
    worker.submit_as("team-a", "fast.limited", count=1)
    connection = Connection(settings.redis_dsn(), transport=ReliableTransport)
    hub = Hub()
    connection.transport.register_with_event_loop(connection.connection, hub)
    message = connection.default_channel.basic_get("default", no_ack=False)
    connection.collect()
    try:
        message.ack()  # written through the pool the channel still holds, or refused
    except redis.exceptions.ConnectionError:
        acked = False
    else:
        acked = True
    assert worker.redis.hlen(Channel.unacked_key) == (0 if acked else 1)
    hub.close()


def test_a_failed_ack_write_is_retried_at_a_later_round(
    settings: Settings, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush Redis did not answer keeps its acks for a later round instead of leaving
    them to their leases, which held their slots for a visibility timeout (found by
    review)."""
    worker.submit_as("team-a", "fast.limited", count=2)
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        hub = Hub()
        connection.transport.register_with_event_loop(connection.connection, hub)
        channel = connection.default_channel
        for message in [channel.basic_get("default", no_ack=False) for _ in range(2)]:
            message.ack()
        write = type(channel.qos)._write_acks
        failures = iter([redis.exceptions.ConnectionError("a blip")])

        def flaky(qos: object, tags: list[str]) -> None:
            for failure in failures:
                raise failure
            write(qos, tags)

        monkeypatch.setattr(type(channel.qos), "_write_acks", flaky)
        monkeypatch.setattr(type(channel.qos), "RETRY_AFTER_SECONDS", 0.0)
        channel.qos.flush_acks()
        assert worker.redis.hlen(Channel.unacked_key) == 2
        assert len(channel.qos._deferred) == 2  # kept for the next round
        channel.qos.flush_acks()
        assert worker.redis.hlen(Channel.unacked_key) == 0
        assert worker.redis.hlen(KEYS.slots) == 0
        hub.close()


def test_a_poll_writes_the_pending_acks_before_it_asks_for_more(
    settings: Settings, worker: InProcessWorker
) -> None:
    """The slots of the acks pending go back before the next claim (not at some later tick,
    after a take that met a tenant still at its limit: found by review); and a closed
    connection takes its flush off the event loop."""
    worker.submit_as("team-a", "fast.limited", count=2)
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        hub = Hub()
        connection.transport.register_with_event_loop(connection.connection, hub)
        channel = connection.default_channel
        first = channel.basic_get("default", no_ack=False)
        first.ack()
        assert worker.redis.hlen(Channel.unacked_key) == 1
        channel.basic_consume("default", False, lambda message: None, "test")
        connection.transport.cycle.on_poll_start()  # registers the channel and polls
        assert worker.redis.hlen(Channel.unacked_key) == 0
        assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) is None
        flush = connection.transport.flush_acks
        assert flush in hub.on_tick
    assert flush not in hub.on_tick
    hub.close()
