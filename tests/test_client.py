"""`conveyor.client` against a live API and workers: every method, typed errors, retries,
the event stream (order, resumption) and `wait()` with its polling fallback."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    JobEvent,
    NotFound,
    RateLimited,
    Retrying,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
    WorkflowEvent,
    WorkflowState,
)
from tests.conftest import fresh_db, started_platform
from tests.support.auth import ADMIN_KEY, TEAM_A_READER_KEY, TEST_KEYS, keys_document
from tests.support.processes import Platform, RedisServer, free_port

API_METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, module_logs: Path) -> Iterator[Platform]:
    """API (event streams closed after 1 s, so clients must resume) and two tiers."""
    platform = started_platform(
        redis_server,
        module_logs,
        ("low", "default"),
        CONVEYOR_API__EVENTS_MAX_SECONDS="1",
        CONVEYOR_METRICS__API_PORT=str(API_METRICS_PORT),
    )
    yield platform
    platform.stop()


@pytest.fixture
def client(live: Platform) -> Iterator[Client]:
    with Client(live.base_url, ADMIN_KEY) as client:
        yield client


def test_submit_get_cancel_and_tasks(client: Client) -> None:
    job = client.submit("demo.echo", {"payload": {"n": 1}}, delay_seconds=3600, priority="high")
    assert (job.task, str(job.queue), str(job.state)) == ("demo.echo", "high", "scheduled")
    assert job.idempotency_key is not None  # the client keys every submission
    assert client.get(job.id).id == job.id
    cancelled = client.cancel(job.id)
    assert str(cancelled.state) == "cancelled"
    names = {task["name"] for task in client.tasks()}
    assert {"demo.sleep", "webhook.deliver"} <= names


def test_an_idempotent_submission_returns_the_same_job(client: Client) -> None:
    first = client.submit(
        "demo.echo", {"payload": 1}, idempotency_key="client-test-1", delay_seconds=60
    )
    again = client.submit(
        "demo.echo", {"payload": 1}, idempotency_key="client-test-1", delay_seconds=60
    )
    assert again.id == first.id
    with pytest.raises(Conflict) as conflict:
        client.submit(
            "demo.echo", {"payload": 2}, idempotency_key="client-test-1", delay_seconds=60
        )
    assert conflict.value.status == 409


def test_list_iterates_every_page(client: Client) -> None:
    ids = []
    for i in range(5):
        job = client.submit("demo.echo", {"payload": i}, delay_seconds=7200, priority="low")
        ids.append(job.id)
        time.sleep(0.002)  # a millisecond of its own: listings order by creation time, ties by id
    listed = list(client.list(state="scheduled", queue="low", page_size=2))
    assert [job.id for job in listed[:5]] == list(reversed(ids))  # newest first, 3 pages
    assert listed[0].args is None  # summaries, unless asked
    full = next(iter(client.list(state="scheduled", queue="low", fields=["args"])))
    assert full.args == {"payload": 4}


def test_submit_many_answers_each_submission(client: Client) -> None:
    outcomes = client.submit_many(
        [{"task": "demo.echo", "args": {"payload": i}, "delay_seconds": 3600} for i in range(3)]
        + [{"task": "demo.sleep", "args": {"seconds": -1}}]
        + [{"task": "demo.echo", "idempotency_key": "many-1", "delay_seconds": 3600}] * 2
    )
    assert [o.status for o in outcomes] == [202, 202, 202, 422, 202, 200]
    assert [o.ok for o in outcomes] == [True, True, True, False, True, True]
    assert outcomes[3].problem is not None
    assert outcomes[3].problem["errors"][0]["pointer"] == "#/jobs/3/args/seconds"
    first, original, replay = (outcomes[i].job for i in (0, 4, 5))
    assert first is not None
    assert original is not None
    assert replay is not None
    assert replay.id == original.id
    assert client.get(first.id).args == {"payload": 0}


def test_errors_are_typed(live: Platform, client: Client) -> None:
    with pytest.raises(ValidationFailed) as invalid:
        client.submit("demo.sleep", {"seconds": -1})
    assert invalid.value.errors[0]["pointer"] == "#/args/seconds"
    with pytest.raises(ValidationFailed, match="task must be one of"):
        client.submit("no.such.task")
    with pytest.raises(NotFound):
        client.get("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound):
        client.wait("00000000-0000-4000-8000-000000000000", timeout=5)
    with Client(live.base_url, "cvk_wrong") as anonymous, pytest.raises(Unauthorized):
        anonymous.get("00000000-0000-4000-8000-000000000000")
    with Client(live.base_url, TEAM_A_READER_KEY) as reader, pytest.raises(Forbidden):
        reader.submit("demo.echo")


def test_connection_failures_are_retried_then_raised() -> None:
    """Each retry is told to `on_retry` before its wait (what failed, why, which retry, in
    how long), by both clients."""
    url, job = f"http://127.0.0.1:{free_port()}", "00000000-0000-4000-8000-000000000000"
    told: list[Retrying] = []
    started = time.monotonic()
    dead = Client(url, ADMIN_KEY, max_retries=2, on_retry=told.append)
    with dead, pytest.raises(TransportError):
        dead.get(job)
    assert time.monotonic() - started >= 0.5  # two backoffs of at least 0.25 s and 0.5 s
    get = f"GET /v1/jobs/{job}"
    assert [(r.attempt, r.max_retries, r.what) for r in told] == [(1, 2, get), (2, 2, get)]
    assert all("refused" in r.reason.lower() and 0.2 <= r.delay <= 1.0 for r in told), told
    assert f"GET /v1/jobs/{job} at {url}: " in str(told[0])
    assert str(told[0]).endswith(f"; retry 1/2 in {told[0].delay:.1f} s")

    async def scenario() -> list[Retrying]:
        heard: list[Retrying] = []
        async with AsyncClient(url, ADMIN_KEY, max_retries=1, on_retry=heard.append) as client:
            with pytest.raises(TransportError):
                await client.submit("demo.echo")
        return heard

    assert [(r.attempt, r.what) for r in asyncio.run(scenario())] == [(1, "POST /v1/jobs")]


def test_wait_follows_every_progress_step_in_order(client: Client) -> None:
    job = client.submit("demo.sleep", {"seconds": 3})
    events: list[JobEvent] = []
    done = client.wait(job.id, timeout=60, on_event=events.append)
    assert str(done.state) == "succeeded"
    assert done.result == {"slept": 3.0}
    assert events[0].event == "job"
    assert events[-1].is_terminal
    ids = [tuple(map(int, e.id.split("-"))) for e in events if e.id != "0-0"]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    steps = [e.progress["current"] for e in events if e.event == "progress" and e.progress]
    assert steps == sorted(steps)
    assert steps[-1] == 3.0


def test_the_stream_resumes_from_last_event_id_without_loss(live: Platform, client: Client) -> None:
    job = client.submit("demo.sleep", {"seconds": 3})
    client.wait(job.id, timeout=60)
    stored = [entry_id for entry_id, _ in live.redis.xrange(f"conveyor:events:{job.id}")]
    assert len(stored) >= 4  # running, progress x3, succeeded
    # Resume after each event in turn: the rest arrives, exactly, in order.
    for index, last in enumerate(stored[:-1]):
        resumed = [e.id for e in client.events(job.id, last_event_id=last)]
        assert resumed == stored[index + 1 :], (last, resumed)
    # Resuming after the last event ends at once with the finished job (an EventSource
    # reconnecting after the end must not wait out the stream and come back forever).
    started = time.monotonic()
    (final,) = client.events(job.id, last_event_id=stored[-1])
    assert final.is_terminal
    assert final.job().result == {"slept": 3.0}
    assert time.monotonic() - started < 5


def test_events_survive_dropped_connections(live: Platform, client: Client) -> None:
    # The API closes each stream after 1 s: a 4 s job needs several reconnections.
    before = _event_streams_opened(live)
    job = client.submit("demo.sleep", {"seconds": 4})
    seen = [e.id for e in client.events(job.id)]
    stored = [entry_id for entry_id, _ in live.redis.xrange(f"conveyor:events:{job.id}")]
    after_snapshot = seen[1:]
    assert after_snapshot == stored[len(stored) - len(after_snapshot) :]
    assert seen[-1] == stored[-1]
    assert _event_streams_opened(live) - before >= 3


def _event_streams_opened(live: Platform) -> float:
    page = httpx.get(f"http://127.0.0.1:{API_METRICS_PORT}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "conveyor_http_requests_total"
        and sample.labels.get("route") == "/v1/jobs/{job_id}/events"
    )


def test_wait_falls_back_to_polling_when_streams_are_blocked(live: Platform) -> None:
    class NoStreams(httpx.HTTPTransport):
        """A proxy that refuses event streams (as some buffering proxies effectively do)."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/events"):
                return httpx.Response(502, request=request)
            return super().handle_request(request)

    with Client(live.base_url, ADMIN_KEY, transport=NoStreams(), max_retries=1) as client:
        job = client.submit("demo.sleep", {"seconds": 1})
        done = client.wait(job.id, timeout=30, poll_interval=0.2)
    assert str(done.state) == "succeeded"


def test_wait_times_out(client: Client) -> None:
    job = client.submit("demo.echo", delay_seconds=3600)
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        client.wait(job.id, timeout=1.5)
    assert 1.4 < time.monotonic() - started < 10


def test_the_async_client_does_the_same(live: Platform) -> None:
    async def scenario() -> None:
        async with AsyncClient(live.base_url, ADMIN_KEY) as client:
            job = await client.submit("demo.sleep", {"seconds": 2})
            events: list[JobEvent] = []
            done = await client.wait(job.id, timeout=60, on_event=events.append)
            assert str(done.state) == "succeeded"
            assert events[0].event == "job"
            assert events[-1].is_terminal
            listed = [j.id async for j in client.list(task="demo.sleep", page_size=1)]
            assert job.id in listed
            many = await client.submit_many([{"task": "demo.echo"}, {"task": "no.such"}])
            assert [o.status for o in many] == [202, 422]
            with pytest.raises(NotFound):
                await client.get("00000000-0000-4000-8000-000000000000")

    asyncio.run(scenario())


def test_429_and_503_are_retried_after_retry_after(
    redis_server: RedisServer, module_logs: Path, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        keys_document(TEST_KEYS, tenants={"tests": {"rate_per_second": 1, "burst": 1}})
    )
    platform = Platform(
        redis_server, fresh_db(redis_server), module_logs,
        CONVEYOR_AUTH__KEYS_FILE=str(keys_file), CONVEYOR_LIMITS__MAX_QUEUE_DEPTH__HIGH="1",
        CONVEYOR_LIMITS__BACKPRESSURE_RETRY_AFTER_SECONDS="1",
    )  # fmt: skip
    platform.start_api()
    try:
        told: list[Retrying] = []
        with Client(platform.base_url, ADMIN_KEY, max_retries=3, on_retry=told.append) as client:
            client.submit("demo.echo", priority="low")
            started = time.monotonic()
            client.submit("demo.echo", priority="low")  # 429, Retry-After: 1, then accepted
            assert time.monotonic() - started >= 0.9
            assert [(r.reason, r.delay, r.what) for r in told] == [
                ("429 Too Many Requests", 1.0, "POST /v1/jobs")
            ]
            time.sleep(1.1)
            told.clear()
            client.submit_many([{"task": "demo.echo"}] * 2)  # the second one is refused: 429
            assert (told[0].what, told[0].reason) == (
                "1 submission(s) of a batch",
                "refused with 429",
            )
            time.sleep(1.1)
            client.submit("demo.echo", priority="high")  # fills the high queue
        with Client(platform.base_url, ADMIN_KEY, max_retries=1) as client:
            time.sleep(1.1)
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as full:
                client.submit("demo.echo", priority="high")
            assert full.value.retry_after == 1.0
            assert full.value.type == "urn:conveyor:problem:queue-full"
            assert time.monotonic() - started >= 0.9  # one retry after Retry-After
        with Client(platform.base_url, ADMIN_KEY, max_retries=0) as client:
            time.sleep(1.1)  # one token again
            client.submit("demo.echo", priority="low")
            with pytest.raises(RateLimited) as limited:
                client.submit("demo.echo", priority="low")
            assert limited.value.retry_after == 1.0
    finally:
        platform.stop()


# -- workflows against real workers (issue 20) -----------------------------------------------


def test_a_chain_passes_results_through_real_workers(client: Client) -> None:
    events: list[WorkflowEvent] = []
    workflow = client.submit_workflow({"chain": [
        {"task": "demo.square", "args": {"x": 3}},
        {"task": "demo.square", "inputs": {"x": "step-0"}},
        {"task": "demo.square", "inputs": {"x": "step-1"}, "priority": "low"},
    ]})  # fmt: skip
    done = client.wait_workflow(workflow.id, timeout=60, on_event=events.append)
    assert done.state is WorkflowState.SUCCEEDED
    assert [s.result for s in done.steps] == [9, 81, 6561]
    assert events[0].event == "workflow"
    assert events[-1].is_terminal
    # Every step's change is in the stream, read across the 1 s stream reconnections (from
    # its start: on a loaded machine the chain can end before the first stream opens).
    replayed = list(client.workflow_events(workflow.id, last_event_id="0-0"))
    ended = [
        e.data["step"] for e in replayed if e.event == "step" and e.data["state"] == "succeeded"
    ]
    assert ended == ["step-0", "step-1", "step-2"]
    assert replayed[-1].is_terminal


def test_a_chord_callback_receives_all_ten_results(client: Client) -> None:
    workflow = client.submit_workflow({"chord": {
        "parallel": [{"task": "demo.square", "args": {"x": i}} for i in range(10)],
        "then": {"name": "total", "task": "demo.sum", "inputs": {"values": "*"}},
    }})  # fmt: skip
    done = client.wait_workflow(workflow.id, timeout=60)
    assert done.state is WorkflowState.SUCCEEDED
    total = done.steps[-1]
    assert (total.name, total.result, total.attempts) == ("total", 285, 1)


def test_a_diamond_joins_once_after_both_branches(client: Client) -> None:
    workflow = client.submit_workflow({"steps": [
        {"name": "a", "task": "demo.sleep", "args": {"seconds": 0.2}},
        {"name": "b", "task": "demo.sleep", "args": {"seconds": 1}, "depends_on": ["a"]},
        {"name": "c", "task": "demo.sleep", "args": {"seconds": 0.2}, "depends_on": ["a"]},
        {"name": "d", "task": "demo.echo", "depends_on": ["b", "c"], "inputs": {"payload": "*"}},
    ]})  # fmt: skip
    done = client.wait_workflow(workflow.id, timeout=60)
    steps = {s.name: s for s in done.steps}
    assert done.state is WorkflowState.SUCCEEDED
    assert steps["d"].attempts == 1
    assert steps["d"].result == {"payload": [{"slept": 1.0}, {"slept": 0.2}]}
    d_started = steps["d"].started_at
    assert d_started is not None
    assert all(f is not None and f <= d_started for f in (steps["b"].finished_at,
                                                          steps["c"].finished_at))  # fmt: skip


def test_cancelling_a_workflow_mid_way_runs_nothing_more(client: Client) -> None:
    workflow = client.submit_workflow({"chain": [
        {"task": "demo.sleep", "args": {"seconds": 30}},
        *[{"task": "demo.echo", "args": {"payload": i}} for i in range(3)],
    ]})  # fmt: skip
    deadline = time.monotonic() + 30
    while client.get_workflow(workflow.id).steps[0].state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelled = client.cancel_workflow(workflow.id, terminate=True)
    assert cancelled.state is WorkflowState.CANCELLED
    time.sleep(2)  # whatever a worker would still run, it would have started by now
    after = client.get_workflow(workflow.id)
    assert [s.state for s in after.steps] == ["cancelled"] * 4
    assert [s.attempts for s in after.steps] == [1, 0, 0, 0]
    listed = [w.id for w in client.list_workflows(state="cancelled")]
    assert workflow.id in listed


def test_the_async_client_follows_workflows_too(live: Platform) -> None:
    async def scenario() -> None:
        async with AsyncClient(live.base_url, ADMIN_KEY) as client:
            workflow = await client.submit_workflow(
                {"chain": [{"task": "demo.square", "args": {"x": 2}},
                           {"task": "demo.square", "inputs": {"x": "step-0"}}]}
            )  # fmt: skip
            events: list[WorkflowEvent] = []
            done = await client.wait_workflow(workflow.id, timeout=60, on_event=events.append)
            assert [s.result for s in done.steps] == [4, 16]
            assert events[-1].is_terminal
            assert workflow.id in [w.id async for w in client.list_workflows(page_size=1)]
            with pytest.raises(NotFound):
                await client.get_workflow("00000000-0000-4000-8000-000000000000")

    asyncio.run(scenario())


def test_schedules_retry_and_the_audit_log_through_both_clients(
    client: Client, live: Platform
) -> None:
    created = client.create_schedule({"name": "client-hourly", "task": "demo.echo",
                                      "args": {"payload": 1}, "cron": "0 * * * *",
                                      "timezone": "Asia/Tokyo"})  # fmt: skip
    assert created.id in [s.id for s in client.schedules()]
    assert len(client.get_schedule(created.id).next_runs) == 5
    with pytest.raises(Conflict):  # a version that changed meanwhile: 412 is a Conflict
        client.update_schedule(created.id, {"args": {"payload": 2}}, version=created.version + 1)
    changed = client.update_schedule(created.id, {"args": {"payload": 2}},
                                     version=created.version)  # fmt: skip
    assert changed.args == {"payload": 2}
    assert client.pause_schedule(created.id).paused
    assert not client.resume_schedule(created.id).paused
    run = client.trigger_schedule(created.id)
    assert client.get(str(run["job_id"])).task == "demo.echo"
    failed = client.submit("demo.fail", {"mode": "retryable"}, max_retries=0)
    deadline = time.monotonic() + 30
    while client.get(failed.id).state != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.retry(failed.id).attempts >= 1

    def audited() -> set[str]:  # entries are stored shortly after their answers
        return {entry.action for entry, _ in zip(client.audit(), range(20), strict=False)}

    deadline = time.monotonic() + 10
    while not {"create_schedule", "trigger_schedule", "retry_job"} <= audited():
        assert time.monotonic() < deadline, audited()
        time.sleep(0.1)

    async def scenario() -> None:
        async with AsyncClient(live.base_url, ADMIN_KEY) as aclient:
            assert created.id in [s.id for s in await aclient.schedules()]
            assert (await aclient.pause_schedule(created.id)).paused
            await aclient.delete_schedule(created.id)
            with pytest.raises(NotFound):
                await aclient.get_schedule(created.id)
            deadline = time.monotonic() + 10
            while True:  # entries are stored shortly after their answers
                entries = [entry async for entry in aclient.audit(page_size=5)]
                if entries[0].action == "delete_schedule" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert entries[0].action == "delete_schedule"

    asyncio.run(scenario())
