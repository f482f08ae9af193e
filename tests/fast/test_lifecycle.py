"""A job's life in a worker without Celery: `JobRunner` runs the messages the API wrote and
the API reads the outcome. Success and progress, retries with backoff, exhausted retries and
poison jobs dead-lettered, permanent failures, cancellation before and while running,
duplicate deliveries skipped, completion callbacks (formerly in tests/test_jobs.py, through
real workers; what needs processes, signals or time limits is still tested there)."""

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import redis
from celery.exceptions import Reject
from kombu import Connection
from kombu.transport.redis import Channel
from redis.backoff import NoBackoff
from redis.retry import Retry

from conveyor.core.settings import Settings
from conveyor.core.signing import tenant_secret, verify
from conveyor.jobstore.runs import Fence, StartVerdict
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission, prepare
from conveyor.worker.leases import StartGrace, renew_reserved
from conveyor.worker.lifecycle import JobRunner
from conveyor.worker.services import unlock_pool_in_child
from conveyor.worker.transport import ReliableTransport
from tests.conftest import fresh_db
from tests.fast import tasks
from tests.fast.harness import CATALOG, KEYS, InProcessWorker, Message
from tests.support.processes import RedisServer, free_port
from tests.support.receiver import Receiver

DAY = 24 * 3600


async def submit(client: httpx.AsyncClient, **body: object) -> dict[str, Any]:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def get(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def ts(value: object) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


async def test_a_success_is_recorded_and_expires_after_the_retention(
    client: httpx.AsyncClient,
    worker: InProcessWorker,
    redis_client: "redis.Redis",
    finished: list[dict[str, Any]],
) -> None:
    job = await submit(client, task="demo.echo", args={"payload": {"n": 1}}, idempotency_key="k")
    assert worker.run_next("default").job_id == job["id"]
    done = await get(client, job["id"])
    assert (done["state"], done["result"], done["attempts"], done["error"]) == (
        "succeeded", {"payload": {"n": 1}}, 1, None,
    )  # fmt: skip
    assert ts(done["created_at"]) <= ts(done["started_at"]) <= ts(done["finished_at"])
    # The record, its events and its idempotency key go after the retention (7 days by default).
    for key in (KEYS.job(job["id"]), KEYS.events(job["id"]), KEYS.idempotency("tests", "k")):
        assert 7 * DAY - 60 < redis_client.ttl(key) <= 7 * DAY, key
    assert [(f["job_id"], f["outcome"], f["exception"]) for f in finished] == [
        (job["id"], "succeeded", None)
    ]


class Paused:
    """A fast.steps job run in a thread (the worker), held after its first progress report
    until the test resumes it; `steps` are the reports that returned to the task."""

    def __init__(self, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.worker = worker
        self.reached, self.resumed = threading.Event(), threading.Event()
        self.steps: list[int] = []
        monkeypatch.setattr(tasks, "after_step", self._after_step)

    def _after_step(self, job_id: str, step: int) -> None:
        self.steps.append(step)
        if step == 1:
            self.reached.set()
            assert self.resumed.wait(10)

    async def start(
        self, client: httpx.AsyncClient, steps: int
    ) -> tuple[dict[str, Any], "asyncio.Task[Message]"]:
        """Submit the job and run it up to its first report: (the job, the running thread)."""
        job = await submit(client, task="fast.steps", args={"steps": steps})
        running = asyncio.create_task(asyncio.to_thread(self.worker.run_next, "default"))
        assert await asyncio.to_thread(self.reached.wait, 10)
        return job, running


@pytest.fixture
def paused(worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch) -> Paused:
    return Paused(worker, monkeypatch)


async def test_progress_is_visible_while_running(client: httpx.AsyncClient, paused: Paused) -> None:
    job, running = await paused.start(client, steps=2)
    seen = await get(client, job["id"])
    assert seen["state"] == "running"
    assert seen["attempts"] == 1
    assert seen["progress"] == {"current": 1.0, "total": 2.0, "message": "step 1"}
    paused.resumed.set()
    await running
    done = await get(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["result"] == {"steps": 2}
    assert done["progress"] == {"current": 2.0, "total": 2.0, "message": "step 2"}
    assert paused.steps == [1, 2]


async def test_demo_sleep_reports_what_is_left_then_done(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    seconds = 0.3
    job = await submit(client, task="demo.sleep", args={"seconds": seconds})
    running = asyncio.create_task(asyncio.to_thread(worker.run_next, "low"))
    seen = None
    while seen is None:
        assert not running.done(), "the job ended before its progress was seen"
        current = await get(client, job["id"])
        progress = current["progress"]
        if current["state"] == "running" and progress and 0 < progress["current"] < seconds:
            seen = current
        await asyncio.sleep(0.01)
    assert seen["progress"]["total"] == seconds
    assert seen["progress"]["message"].endswith("s left")
    await running
    done = await get(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["progress"] == {"current": seconds, "total": seconds, "message": "done"}


async def test_retry_with_backoff_then_success(
    client: httpx.AsyncClient, worker: InProcessWorker, finished: list[dict[str, Any]]
) -> None:
    job = await submit(
        client, task="demo.fail", args={"mode": "retryable", "succeed_on_attempt": 3}
    )
    # demo.fail's backoff: 0.5 s then 1 s, each jittered down to no less than half.
    for attempt, (shortest, longest) in enumerate([(0.25, 0.5), (0.5, 1.0)], start=1):
        before = time.time()
        worker.run_next("default")
        after = time.time()
        current = await get(client, job["id"])
        assert current["state"] == "retrying"
        assert current["attempts"] == attempt
        assert current["error"] == {"type": "RetryableError", "message": "demo failure"}
        # The next attempt waits in the delayed set (scored in whole ms), not on the queue.
        due = worker.due_at(job["id"])
        assert due is not None
        assert before + shortest - 0.001 <= due <= after + longest
        assert worker.queued("default") == []
        assert worker.promote() == 0, "not due yet"
        worker.fast_forward(job["id"])
        assert worker.promote() == 1
        (message,) = worker.queued("default")
        assert (message.job_id, message.headers["retries"]) == (job["id"], attempt)
        assert message.headers["conveyor_generation"] == attempt
        assert (await get(client, job["id"]))["state"] == "retrying"
    worker.run_next("default")
    done = await get(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 3
    assert done["result"] == {"succeeded_on_attempt": 3}
    assert [f["outcome"] for f in finished] == ["retried", "retried", "succeeded"]


async def test_retries_exhausted_is_a_failure_kept_as_a_dead_letter(
    client: httpx.AsyncClient,
    worker: InProcessWorker,
    redis_client: "redis.Redis",
    finished: list[dict[str, Any]],
) -> None:
    job = await submit(client, task="demo.fail", args={"mode": "retryable"}, max_retries=1)
    worker.run_next("default")
    worker.fast_forward(job["id"])
    assert worker.promote() == 1
    worker.run_next("default")
    done = await get(client, job["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == 2
    assert done["error"] == {"type": "RetryableError", "message": "demo failure"}
    assert done["dead_lettered_at"] is not None
    dead = (await client.get("/v1/dead-letters")).json()["items"]
    assert [j["id"] for j in dead] == [job["id"]]
    # Kept for the dead-letter retention (14 days by default), not the shorter one.
    assert 14 * DAY - 60 < redis_client.ttl(KEYS.job(job["id"])) <= 14 * DAY
    assert finished[-1]["outcome"] == "failed"
    assert finished[-1]["dead_lettered"] is True
    assert finished[-1]["exception"] == "RetryableError"


async def test_permanent_failure_is_not_retried(
    client: httpx.AsyncClient, worker: InProcessWorker, finished: list[dict[str, Any]]
) -> None:
    job = await submit(client, task="demo.fail", args={"mode": "permanent", "message": "bad input"})
    worker.run_next("default")
    done = await get(client, job["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == 1
    assert done["error"] == {"type": "PermanentError", "message": "bad input"}
    assert done["dead_lettered_at"] is None
    assert "Traceback" not in json.dumps(done)
    assert worker.due_at(job["id"]) is None
    assert worker.queued("default") == []
    assert (await client.get("/v1/dead-letters")).json()["items"] == []
    assert [(f["outcome"], f["exception"]) for f in finished] == [("failed", "PermanentError")]


async def test_delayed_job_runs_after_its_delay(
    client: httpx.AsyncClient, worker: InProcessWorker
) -> None:
    delay = 0.2
    job = await submit(client, task="demo.echo", delay_seconds=delay)
    assert job["state"] == "scheduled"
    due = worker.due_at(job["id"])
    assert due is not None
    assert due >= ts(job["created_at"]) + delay - 0.01
    assert worker.promote() == 0, "not due yet"
    assert worker.queued("default") == []
    await asyncio.sleep(max(0.0, due - time.time()) + 0.002)
    assert worker.promote() == 1
    assert (await get(client, job["id"]))["state"] == "queued"
    worker.run_next("default")
    done = await get(client, job["id"])
    assert done["state"] == "succeeded"
    assert ts(done["started_at"]) >= ts(done["created_at"]) + delay


async def test_cancel_running_job_stops_it_at_its_next_progress_report(
    client: httpx.AsyncClient, paused: Paused, finished: list[dict[str, Any]]
) -> None:
    job, running = await paused.start(client, steps=2)
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    paused.resumed.set()
    await running
    assert paused.steps == [1], "the task went on past a refused progress report"
    final = await get(client, job["id"])
    assert final["state"] == "cancelled"
    assert final["result"] is None
    assert final["progress"]["current"] == 1
    assert [(f["outcome"], f["dead_lettered"]) for f in finished] == [("cancelled", False)]


async def test_cancelled_queued_job_never_runs(
    client: httpx.AsyncClient,
    worker: InProcessWorker,
    redis_url: str,
    redis_client: "redis.Redis",
    finished: list[dict[str, Any]],
) -> None:
    key = f"count-{uuid.uuid4()}"
    job = await submit(
        client, task="tests.count", args={"key": key, "redis_url": redis_url}, priority="low"
    )
    assert (await client.post(f"/v1/jobs/{job['id']}/cancel")).json()["state"] == "cancelled"
    assert worker.run_next("low").job_id == job["id"]  # the message is still delivered
    assert redis_client.get(key) is None
    final = await get(client, job["id"])
    assert (final["state"], final["attempts"]) == ("cancelled", 0)
    assert finished == []


async def test_a_finished_jobs_redelivery_is_skipped(
    client: httpx.AsyncClient,
    worker: InProcessWorker,
    redis_url: str,
    redis_client: "redis.Redis",
) -> None:
    key = f"count-{uuid.uuid4()}"
    job = await submit(client, task="tests.count", args={"key": key, "redis_url": redis_url})
    message = worker.run_next("high")
    worker.run(message)  # a second copy of the message (a redelivery after the ack was lost)
    assert redis_client.get(key) == "1"
    done = await get(client, job["id"])
    assert done["result"] == {"executions": 1, "attempt": 1}
    assert (done["state"], done["attempts"]) == ("succeeded", 1)


async def test_a_job_its_workers_die_under_is_poison(
    client: httpx.AsyncClient,
    worker: InProcessWorker,
    settings: Settings,
    finished: list[dict[str, Any]],
) -> None:
    job = await submit(client, task="fast.die")
    message = worker.take("default")
    deaths = settings.worker.max_worker_deaths
    for _ in range(deaths):  # each delivery's worker dies; the message comes back
        with pytest.raises(tasks.WorkerDied):
            worker.run(message)
    assert (await get(client, job["id"]))["state"] == "running"
    worker.run(message)  # the delivery after the last death does not run it again
    done = await get(client, job["id"])
    assert done["state"] == "failed"
    assert (done["attempts"], done["deaths"]) == (deaths, deaths)
    assert done["error"] == {
        "type": "WorkerLost",
        "message": f"the worker died while running this job {deaths} times",
    }
    assert done["dead_lettered_at"] is not None
    assert [j["id"] for j in (await client.get("/v1/dead-letters")).json()["items"]] == [job["id"]]
    assert [(f["outcome"], f["dead_lettered"], f["runtime_seconds"]) for f in finished] == [
        ("failed", True, None)
    ]


async def test_completion_callback_is_enqueued_once_and_posts_the_signed_job(
    client: httpx.AsyncClient, worker: InProcessWorker, hook: Receiver
) -> None:
    job = await submit(client, task="demo.echo", args={"payload": "x"}, callback_url=hook.url)
    message = worker.run_next("default")
    worker.run(message)  # a duplicate delivery enqueues no second callback
    page = await client.get("/v1/jobs", params={"task": "webhook.deliver", "fields": "args"})
    (callback,) = page.json()["items"]
    assert callback["idempotency_key"] == f"callback:{job['id']}"
    assert callback["tenant"] == "tests"
    assert callback["args"]["url"] == hook.url
    worker.run_next("default")  # the callback job itself
    assert (await get(client, callback["id"]))["state"] == "succeeded"
    (request,) = hook.requests
    payload = json.loads(request.body)
    assert payload["id"] == job["id"]
    assert payload["state"] == "succeeded"
    assert payload["result"] == {"payload": "x"}
    # The callback belongs to the job's tenant ("tests", the admin key's) and is signed with
    # that tenant's key.
    headers, body = request.headers, request.body
    assert verify(tenant_secret("test-signing-secret", "tests"), headers, body)
    assert not verify(tenant_secret("test-signing-secret", "team-a"), headers, body)
    assert not verify("test-signing-secret", headers, body)


async def test_callback_on_cancel(
    client: httpx.AsyncClient, worker: InProcessWorker, hook: Receiver
) -> None:
    job = await submit(client, task="demo.echo", delay_seconds=600, callback_url=hook.url)
    (await client.post(f"/v1/jobs/{job['id']}/cancel")).raise_for_status()
    worker.run_next("default")  # the callback job: the delayed one never reached a queue
    (request,) = hook.requests
    payload = json.loads(request.body)
    assert (payload["id"], payload["state"]) == (job["id"], "cancelled")


def test_a_job_store_error_hands_the_message_back(settings: Settings) -> None:
    spec = CATALOG["demo.echo"]
    _job, raw = prepare(spec, Submission.of(spec, tenant="t1", args={}), settings.worker)
    message = Message.parse(raw)
    unreachable = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    runner = JobRunner(JobStore(unreachable, settings), CATALOG, settings)
    try:
        with pytest.raises(Reject) as rejected:
            runner.run(spec, message.request(), message.kwargs)
    finally:
        unreachable.close()
    assert rejected.value.requeue is True


@pytest.mark.parametrize(
    ("task", "args", "outcome"),
    [("demo.echo", {}, "succeeded"), ("demo.fail", {"mode": "retryable"}, "retrying")],
)
def test_a_run_whose_start_a_failover_lost_hands_its_message_back(
    worker: InProcessWorker, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
    task: str, args: dict[str, str], outcome: str,
) -> None:  # fmt: skip
    """A kill -9 of the Sentinel primary: the promoted replica had the delivery's claim but
    not its start, which the old primary had applied. The run's outcome write (a success, or
    a retry) then reaches the new primary, where the record is still `queued` with no attempt:
    refused, and the message goes back to the queue instead of being acked (acked, the job
    stayed `queued` with its message nowhere, for ever). Its next delivery runs it.
    """
    spec = CATALOG[task]
    job_id = worker.store.submit(spec, Submission.of(spec, tenant="t1", args=args)).job_id
    message = worker.take(spec.queue)
    old = worker.redis
    # The replica has every write up to the start: a copy of the old primary, now.
    new_db = fresh_db(redis_server)
    for key in old.scan_iter():
        old.copy(key, key, destination_db=new_db)
    new = redis_server.client(new_db)
    real_start = worker.store.start

    def start_then_failover(*args: Any, **kwargs: Any) -> Any:
        started = real_start(*args, **kwargs)  # applied by the old primary, which dies
        worker.store.client = new  # before replicating it: the rest goes to the new primary
        return started

    monkeypatch.setattr(worker.store, "start", start_then_failover)
    try:
        with pytest.raises(Reject) as rejected:
            worker.run(message)
        assert rejected.value.requeue is True  # Celery restores the unacked message
        record = new.hgetall(KEYS.job(job_id))
        # No start: a record is written without `attempts` until its first one.
        assert (record["state"], "attempts" in record) == ("queued", False)
        assert old.hget(KEYS.job(job_id), "state") != "queued"  # the old primary had it
        monkeypatch.undo()
        worker.run(message)  # the redelivery, on the new primary
        after = new.hgetall(KEYS.job(job_id))
        assert (after["state"], after["attempts"]) == (outcome, "1")
    finally:
        new.close()


class _Held:
    """Celery's reserved request of a delivery, as the lease renewer reads it."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.id = message.headers["id"]
        self.delivery_info = {"routing_key": message.delivery_info["routing_key"]}


def _claimed(settings: Settings, queue: str, count: int) -> tuple[Any, list[Any]]:
    """A kombu channel of Conveyor's transport on the test Redis, and `count` deliveries it
    took from `queue` (each recorded unacked, with its lease, as a claim records it)."""
    connection = Connection(settings.redis_dsn(), transport=ReliableTransport,
                            transport_options={"visibility_timeout": _lease(settings)})  # fmt: skip
    channel = connection.default_channel
    messages = [channel.basic_get(queue, no_ack=False) for _ in range(count)]
    assert all(messages)
    return connection, messages


def _lease(settings: Settings) -> int:
    return settings.worker.visibility_timeout_seconds


def _age_leases(client: "redis.Redis", settings: Settings) -> None:
    """Make every lease look last renewed two visibility timeouts ago (by Redis' clock)."""
    seconds, _ = client.time()
    old = seconds - 2 * _lease(settings)
    client.zadd(Channel.unacked_index_key, dict.fromkeys(client.zrange(
        Channel.unacked_index_key, 0, -1), old))  # fmt: skip


def _as_delivered(message: Message, tag: str) -> SimpleNamespace:
    """The request a prefork child gets for `message` (its properties carry the tag)."""
    return SimpleNamespace(**message.headers, properties={"delivery_tag": tag})


def test_a_delivery_whose_run_never_starts_stops_holding_its_lease(
    worker: InProcessWorker, settings: Settings, redis_client: "redis.Redis"
) -> None:
    """Seen once in the kill -9 failover test: a fresh worker's pool child took a delivery
    and hung before start.lua; the worker renewed the delivery's lease for ever, so the job
    stayed `queued` with its message unacked. Renewals past the start grace now need the
    record to name the delivery as started: the hung delivery's lease lapses, kombu's sweep
    redelivers the message (fresh tag), another child runs it, and the hung child's late
    start is refused (skip). A long run that did start keeps its lease.
    """
    spec = CATALOG["demo.echo"]
    running, hung = (worker.store.submit(spec, Submission.of(spec, tenant="t1", args={})).job_id
                     for _ in range(2))  # fmt: skip
    connection, (running_msg, hung_msg) = _claimed(settings, "default", 2)
    now = [0.0]
    grace = StartGrace(settings.worker.start_grace_leases * _lease(settings), clock=lambda: now[0])
    held = [_Held(running_msg), _Held(hung_msg)]
    try:
        # The first child starts its (long) run; the second hangs before start.lua.
        started = worker.store.start(running, owner="host:1", delivery=running_msg.delivery_tag)
        assert started.verdict is StartVerdict.RUN
        _age_leases(redis_client, settings)
        renewal = renew_reserved(worker.store, grace, held, ["default"])
        assert (renewal.renewed, renewal.lapsed) == (2, ())  # both in their start grace
        connection.default_channel.qos.restore_visible(num=100, interval=1)
        assert redis_client.llen(KEYS.queue("default")) == 0

        now[0] = grace.seconds  # past the grace: a visibility timeout without renewal
        _age_leases(redis_client, settings)
        renewal = renew_reserved(worker.store, grace, held, ["default"])
        assert (renewal.renewed, renewal.lapsed) == (1, (hung,))
        connection.default_channel.qos.restore_visible(num=100, interval=1)
        assert redis_client.hexists(Channel.unacked_key, running_msg.delivery_tag)
        assert not redis_client.hexists(Channel.unacked_key, hung_msg.delivery_tag)

        again = worker.take("default")  # the redelivery, under a fresh tag
        assert again.job_id == hung
        tag = orjson.loads(again.raw)["properties"]["delivery_tag"]
        assert tag != hung_msg.delivery_tag
        worker.runner.run(spec, _as_delivered(again, tag), again.kwargs)
        record = redis_client.hgetall(KEYS.job(hung))
        assert (record["state"], record["attempts"], record["delivery"]) == ("succeeded", "1", tag)
        # The hung child wakes up: its start is refused and it acks its old tag (gone).
        late = worker.runner.store.start(hung, owner="host:2", delivery=hung_msg.delivery_tag)
        assert late.verdict is StartVerdict.SKIP
    finally:
        connection.release()


def test_a_late_start_of_a_hung_delivery_supersedes_the_redelivered_run(
    worker: InProcessWorker,
) -> None:
    """The other order: the hung child starts while the redelivery's run is still going. Its
    start counts a death (the record was `running`) and takes a newer fence: the redelivered
    run's writes are refused and it stops, the late run's outcome is the job's (one extra
    execution, explained by the recorded death, as after any lapsed lease)."""
    spec = CATALOG["demo.echo"]
    job_id = worker.store.submit(spec, Submission.of(spec, tenant="t1", args={})).job_id
    redelivered = worker.store.start(job_id, owner="host:1", delivery="fresh-tag")
    late = worker.store.start(job_id, owner="host:2", delivery="old-tag")
    assert (late.verdict, late.attempts, late.deaths) == (StartVerdict.RUN, 2, 1)
    first = Fence.attempt(redelivered.attempts)
    assert worker.store.report_progress(job_id, {"current": 1}, first).stale
    assert worker.store.succeed(job_id, "1", first).stale
    assert worker.store.succeed(job_id, "2", Fence.attempt(late.attempts)).applied


def test_a_child_forked_while_a_thread_holds_the_pool_lock_still_reaches_redis(
    redis_server: RedisServer,
) -> None:
    """The hung pool child of issue 16 (py-spy: blocked in redis-py's `ConnectionPool.reset`):
    the worker's lease renewer held the job store pool's lock while the prefork pool forked a
    child, whose first command then waited on its copy of that lock for ever. The worker's
    `worker_process_init` hook gives the child fresh locks; the forked child here must answer
    within 10 s (it hangs without the hook)."""
    client = redis_server.client()
    client.ping()  # the pool is in use in the parent, as the renewer's is
    held, release = threading.Event(), threading.Event()

    def renewer() -> None:
        with client.connection_pool._lock:  # type: ignore[attr-defined]
            held.set()
            release.wait(10)

    thread = threading.Thread(target=renewer)
    thread.start()
    held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the prefork child: the hook, then its first command
            code = 1
            try:
                unlock_pool_in_child(client)
                code = 0 if client.ping() else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done[0] == pid, "the child hung"
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        thread.join()
        client.close()
