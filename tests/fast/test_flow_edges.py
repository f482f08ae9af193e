"""Faults an adversarial review found in fair share and flow control (claim.lua, release.lua,
flow.lua and the transport), each a test first: a property the design promises, once broken.
"""

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from kombu import Connection
from kombu import Queue as KombuQueue
from kombu.transport.redis import Channel

from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.jobstore import fairq
from conveyor.jobstore.fairq import FlowKind
from conveyor.jobstore.keys import task_gate
from conveyor.jobstore.submission import Submission
from conveyor.worker.transport import ReliableTransport
from tests.fast.harness import CATALOG, KEYS, InProcessWorker, settings_for


@pytest.fixture
def limited_worker(redis_url: str) -> Iterator[InProcessWorker]:
    """A worker whose tenants may run 2 jobs at once per tier."""
    settings = settings_for(redis_url, flow={"tenant_concurrency_per_tier": 2})
    client = sync_client(settings)
    yield InProcessWorker(client, settings)
    client.close()


# -- (d) slot leak: a message without a tenant (a publish through kombu, stock Celery) ------


def test_a_tenantless_delivery_releases_its_slots(
    settings: Settings, worker: InProcessWorker
) -> None:
    """A message published through the transport without Conveyor's tenant header (a stock
    Celery `delay()`, Flower's apply) is claimed under tenant ''. Its slot record is
    'default\\n\\ntask:…'; release.lua splits it with gmatch('[^\\n]+'), which drops the empty
    tenant: the tenant's counter and the task's gate slot are never given back (or, with no
    gate, the script errors on a nil tenant). After max_concurrency such deliveries the
    task's gate is closed for every tenant, for ever (the sweep cannot help: the slot record
    is already gone)."""
    worker.submit_as("team-a", "fast.limited")
    body = orjson.loads(fairq.ready_messages(worker.redis, KEYS, "default")[0])
    worker.claim_all()  # run the API's own copy out of the way
    worker.redis.delete(KEYS.gate_active, KEYS.slots, KEYS.fair_active("default"))
    headers = {k: v for k, v in body["headers"].items() if k != "conveyor_tenant"}
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        producer = connection.Producer()
        for n in range(3):
            producer.publish(b"[[], {}, {}]", routing_key="default",
                             headers={**headers, "id": f"stock-{n}"},
                             content_type="application/json", content_encoding="utf-8")  # fmt: skip
        channel = connection.default_channel
        for _ in range(2):
            message = channel.basic_get("default", no_ack=False)
            assert message is not None
            message.ack()
    assert worker.redis.hgetall(KEYS.fair_active("default")) == {}, "tenant '' counter leaked"
    assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) is None, "gate leaked"
    (third,) = worker.claim_all()
    assert third[0] == "stock-2"


# -- (b) a gate's freed slot handed to a message that cannot run ---------------------------


def test_a_gate_slot_is_not_spent_on_a_paused_tenants_message(worker: InProcessWorker) -> None:
    """Each release reopens ONE message of the gate, the oldest, whatever its tenant. When that
    tenant is paused (or at its tier limit, or its tier paused) the message is held and its
    token parked, but the gate's slot is not given to the next waiter: team-b's job waits at
    the gate of a task with 0 of 2 running, until team-a is resumed."""
    b_running = worker.submit_as("team-b", "fast.limited", count=2)
    running = dict(worker.claim_all())
    assert set(running) == set(b_running)
    worker.submit_as("team-a", "fast.limited", count=2)
    assert worker.claim_all() == [], "team-a's two wait at the task's gate"
    (b_waiting,) = worker.submit_as("team-b", "fast.limited")
    assert worker.claim_all() == []
    fairq.pause(worker.redis, KEYS, FlowKind.TENANT, "team-a")
    for tag in running.values():
        worker.ack(tag)
    assert worker.redis.hget(KEYS.gate_active, task_gate("fast.limited")) is None, "0 running"
    assert [job for job, _ in worker.claim_all()] == [b_waiting]


def test_a_gate_slot_is_not_spent_on_a_tenant_at_its_limit(
    limited_worker: InProcessWorker,
) -> None:
    """The same with a tenant at its per-tier limit (its two long jobs of another task)."""
    worker = limited_worker
    worker.submit_as("team-c", "fast.limited", count=2)
    running = dict(worker.claim_all())
    worker.submit_as("team-a", "fast.limited", count=2)
    assert worker.claim_all() == []
    (b_waiting,) = worker.submit_as("team-b", "fast.limited")
    assert worker.claim_all() == []
    worker.submit_as("team-a", "demo.echo", count=2)
    assert len(worker.claim_all()) == 2, "team-a now at its limit with two long jobs"
    for tag in running.values():
        worker.ack(tag)
    assert [job for job, _ in worker.claim_all()] == [b_waiting]


# -- (e) fairness: a gated backlog is served before everyone else --------------------------


def test_a_gated_backlog_does_not_starve_another_tenant(worker: InProcessWorker) -> None:
    """A claim that sends a message to its gate leaves its tenant's pass unchanged, so the
    same tenant heads the rotation again: team-b's job waits behind every one of team-a's
    jobs on a busy concurrency key (or a paused task), one claim round trip each — not
    "at most one claim per tenant before B's"."""
    (first,) = worker.submit_as("team-a", "fast.keyed", concurrency_key="cust-1")
    assert [job for job, _ in worker.claim_all()] == [first]  # cust-1 busy from now on
    worker.submit_as("team-a", "fast.keyed", count=50, concurrency_key="cust-1")
    (b_job,) = worker.submit_as("team-b")
    attempts = 0
    while True:
        attempts += 1
        got = worker.claim("default")
        if got is not None and got[0].job_id == b_job:
            break
    assert attempts <= 2, f"team-b's job came after {attempts} claims"


# -- (f) the scaling signal: the sweep moves held jobs' tokens back onto the tier ----------


def test_the_sweep_leaves_held_tokens_parked(worker: InProcessWorker) -> None:
    """The sweep 'unholds' every tenant in the rotation with a batch of 1000, moving up to
    min(waiting, room) parked tokens for it although its messages already have their tokens
    on the list: every tick, team-a's held jobs (parked) move into the tier's list, i.e.
    into conveyor_queue_length and the KEDA signal, and conveyor_queue_held reads 0."""
    worker.submit_as("team-a", count=10)
    worker.redis.hset(KEYS.fair_limits, "team-a", 2)  # its own limit (the keys file's)
    assert len(worker.claim_all()) == 2
    assert worker.redis.llen(KEYS.fair_parked("default")) == 8
    worker.submit_as("team-b", count=50)
    fairq.sweep(worker.redis, KEYS, Channel.unacked_key, tenant_limit=0)
    assert worker.redis.llen(KEYS.queue("default")) == 50
    assert worker.redis.llen(KEYS.fair_parked("default")) == 8


def test_resuming_what_is_not_paused_says_so(limited_worker: InProcessWorker) -> None:
    """flow.lua's resume of a tier that is not paused still moves every parked token (held
    tenants') back and reports them: the API answers 204, not 404, and the held jobs flood
    the scaling signal."""
    worker = limited_worker
    worker.submit_as("team-a", count=5)
    worker.claim_all()
    assert worker.redis.llen(KEYS.fair_parked("default")) == 3
    assert not fairq.resume(worker.redis, KEYS, FlowKind.TIER, "default", tenant_limit=2)
    assert worker.redis.llen(KEYS.fair_parked("default")) == 3


# -- (f) kombu features the transport changed ----------------------------------------------


def test_a_consumer_of_a_tier_and_another_queue_receives_both(
    settings: Settings, worker: InProcessWorker, redis_client: "redis.Redis"
) -> None:
    """Before this change a channel polling several lists used BRPOP on all of them; now any
    tier among them makes the poll a BLMOVE on that tier alone, so a non-tier queue on the
    same channel (a Celery worker with -Q default,other; worker_direct) is never read."""
    received: list[str] = []
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        queues = [KombuQueue("default", routing_key="default"),
                  KombuQueue("other", routing_key="other")]  # fmt: skip

        def on_message(message: Any) -> None:
            received.append(message.payload)
            message.ack()

        with connection.Consumer(queues, accept=["json"], on_message=on_message):
            connection.Producer().publish({"n": 1}, routing_key="other", serializer="json")
            for _ in range(3):
                if received:
                    break
                with contextlib.suppress(TimeoutError, socket.timeout):
                    connection.drain_events(timeout=1)
    assert received == [{"n": 1}]


def test_basic_get_without_ack_leaves_no_delivery_behind(
    settings: Settings, worker: InProcessWorker
) -> None:
    """basic_get(no_ack=True) now claims through claim.lua, which always writes the unacked
    record and the slots; nobody acks it, so the slots stay taken and kombu restores the
    message after the visibility timeout: delivered twice (stock kombu removes it)."""
    worker.submit_as("team-a", "fast.limited")
    with Connection(settings.redis_dsn(), transport=ReliableTransport) as connection:
        message = connection.default_channel.basic_get("default", no_ack=True)
        assert message is not None
    assert worker.redis.hlen(Channel.unacked_key) == 0
    assert worker.redis.hlen(KEYS.slots) == 0


# -- (b, weaker) a freed gate slot spent on a message that then waits at another gate -------


def test_a_task_slot_is_not_left_idle_when_its_reopened_message_waits_for_its_key(
    worker: InProcessWorker,
) -> None:
    """A task with both limits (2 at once, 1 per key). The task's freed slot reopens the
    oldest waiter, which then finds its key busy and moves to the key's gate: the task runs 1
    of 2 while a job of a free key waits at the task's gate, until the key's holder ends."""
    spec = dataclasses.replace(CATALOG["fast.keyed"], max_concurrency=2)

    def one(key: str) -> str:
        return worker.store.submit(spec, Submission.of(spec, tenant="team-a", args={},
                                                       concurrency_key=key)).job_id  # fmt: skip

    one("k1"), one("k2")
    running = dict(worker.claim_all())
    assert len(running) == 2
    one("k1")  # waits at the task's gate (2 of 2 running)
    free_key = one("k3")  # waits there too, behind it
    assert worker.claim_all() == []
    worker.ack(list(running.values())[1])  # k2's job ends: the task runs 1 of 2
    assert [job for job, _ in worker.claim_all()] == [free_key]


# -- (a) an upgrade: messages queued by the previous version ----------------------------------


def test_a_message_queued_before_the_upgrade_still_runs(worker: InProcessWorker) -> None:
    """Before this change a tier's list held the messages themselves (accept.lua LPUSHed the
    message; an old API replica still does during a rolling update). claim.lua takes such a
    message for a ready token: with no tenant in the rotation it parks it, and the job stays
    `queued` for ever (no sweep or repair looks at queued jobs); a parked 'token' later claims
    someone else's message."""
    (job,) = worker.submit_as("team-a")
    message = worker.redis.rpop(KEYS.fair_jobs("default", "team-a"))
    worker.redis.delete(KEYS.queue("default"), KEYS.fair_tenants("default"))
    worker.redis.lpush(KEYS.queue("default"), message)  # the previous version's layout
    got = worker.claim("default")
    assert got is not None
    assert got[0].job_id == job
