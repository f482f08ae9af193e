"""What the accept path must not spend CPU on (bench/README.md §1 measured each of these).
Structural checks: timings are the benchmarks' business, never a test's."""

import uuid
from typing import Any

import fastapi.dependencies.utils
import fastapi.routing
import httpx
import opentelemetry.propagate
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import conveyor.telemetry.tracing
from conveyor.api.app import create_app
from conveyor.core.ids import random_uuid
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings, WorkerSettings
from conveyor.jobstore.model import Job, UniqueMode, UniqueSpec
from conveyor.jobstore.submission import Submission, current_trace_context, prepare
from conveyor.telemetry.tracing import producer_span
from tests.fast.harness import CATALOG


async def test_a_submission_takes_no_thread_pool_hop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a sync dependency or endpoint in its thread pool: a hop per request (a
    sync `require_json` cost each submission 8 % of its CPU)."""
    hops: list[str] = []
    original = fastapi.dependencies.utils.run_in_threadpool

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(fastapi.dependencies.utils, "run_in_threadpool", counted)
    monkeypatch.setattr(fastapi.routing, "run_in_threadpool", counted)
    response = await client.post("/v1/jobs", json={"task": "demo.echo", "args": {}})
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
    assert hops == []


def test_fastapi_native_telemetry_is_off(settings: Settings) -> None:
    """Traces come from the OpenTelemetry instrumentor; FastAPI's own telemetry would look
    up the global providers (reading the environment) on every request to find them unset."""
    app = create_app(settings, CATALOG)
    assert not app._native_telemetry.enabled()
    telemetry = app._telemetry
    assert (telemetry["tracing"], telemetry["metrics"], telemetry["logs"]) == (False,) * 3


def test_submissions_are_matched_at_the_top_before_any_included_router(
    settings: Settings,
) -> None:
    """FastAPI matches an included router's routes twice per request, after every included
    router before it: POST /v1/jobs inside the jobs router spent 7 % of the app's
    instructions per submission on routing (bench/README.md round 10)."""
    app = create_app(settings, CATALOG)
    routes = app.router.routes
    submit = next(i for i, route in enumerate(routes) if getattr(route, "name", "") == "submit_job")
    route = routes[submit]
    assert isinstance(route, fastapi.routing.APIRoute)
    assert route.path == "/v1/jobs"
    assert route.methods == {"POST"}
    included = [i for i, route in enumerate(routes) if type(route).__name__ == "_IncludedRouter"]
    assert included
    assert submit < min(included)
    assert next(iter(app.openapi()["paths"])) == "/v1/jobs"


def test_redis_replies_are_parsed_by_hiredis() -> None:
    """The pure-Python RESP parser and encoder cost the API a fifth of its Redis time."""
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE


def test_each_api_worker_settles_its_heap_once_the_app_is_built(settings: Settings) -> None:
    """Gunicorn calls `post_worker_init` after building the app in the worker: the objects that
    live as long as the process leave the collector's scans (full collections over them were
    most of the p99 at 64 connections), and the young generation is collected less often."""
    import gc

    from conveyor.api.server import ApiServer
    from conveyor.core.heap import GC_YOUNG_THRESHOLD

    server = ApiServer(settings)
    threshold = gc.get_threshold()
    try:
        server.cfg.post_worker_init(object())
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_celery_workers_settle_their_heap_in_the_main_process_and_each_child(
    settings: Settings,
) -> None:
    from celery.signals import worker_init, worker_process_init

    from conveyor.worker.app import create_celery

    create_celery(settings, CATALOG)
    for signal, uid in (
        (worker_init, "conveyor.heap"),
        (worker_process_init, "conveyor.heap.child"),
    ):
        assert any(key[0] == uid for key, _ in signal.receivers), f"{uid} is not connected"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"delay_seconds": 30.5, "idempotency_key": "k-1", "timeout_seconds": 12},
        {"callback_url": "https://hooks.example/x", "concurrency_key": "customer-9",
         "priority": Queue.HIGH, "max_retries": 0},
        {"unique": UniqueSpec(key="u", mode=UniqueMode.TTL, ttl_seconds=60)},
    ],
)  # fmt: skip
def test_an_accepted_job_is_answered_as_its_record_reads_back(options: dict[str, Any]) -> None:
    """`NewJob.job()` builds the answer from the values at hand instead of parsing the
    record it has just written: it must be the job the record reads back as, to the byte.
    """
    spec = CATALOG["demo.echo"]
    args = {"payload": {"nested": [1, 2.5, "x", None, True], "when": (1, 2)}, "n": 10**18}
    submission = Submission.of(spec, tenant="team-a", args=args, **options)
    job, _ = prepare(spec, submission, WorkerSettings(), now=1_790_000_000.123456)
    answered, read_back = job.job(), Job.from_record(job.record)
    assert answered.model_dump_json() == read_back.model_dump_json()
    assert answered.model_dump() == read_back.model_dump()
    # Each field in the model's order (the order it is serialized in), of the same type.
    assert list(answered.__dict__) == list(Job.model_fields) == list(read_back.__dict__)
    assert {name: type(value) for name, value in answered.__dict__.items()} == {
        name: type(value) for name, value in read_back.__dict__.items()
    }
    assert answered == read_back
    assert answered.args == {"payload": {"nested": [1, 2.5, "x", None, True], "when": [1, 2]},
                             "n": 10**18}  # fmt: skip


def test_messages_prepared_together_carry_the_trace_context_read_once() -> None:
    """A batch or a workflow reads the active span's context once for all its messages:
    each message still carries it (the worker's span joins the submitter's trace).
    """
    spec = CATALOG["demo.echo"]
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("conveyor.enqueue_batch") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        context = current_trace_context()
        messages = [
            prepare(spec, Submission.of(spec, tenant="t", args={"n": n}), WorkerSettings(),
                    trace_context=context)[1]
            for n in range(3)
        ]  # fmt: skip
    assert context["traceparent"].split("-")[1] == trace_id
    for message in messages:
        assert orjson.loads(message)["headers"]["traceparent"] == context["traceparent"]
    # Outside a span, no context travels.
    assert current_trace_context() == {}


def test_random_uuids_are_version_4_uuids_in_canonical_text() -> None:
    """`random_uuid` writes what `str(uuid.uuid4())` would: job ids and delivery tags are
    read back with `uuid.UUID` by clients and by Celery alike.
    """
    drawn = [random_uuid() for _ in range(2000)]
    assert len(set(drawn)) == len(drawn)
    for text in drawn:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text
    # Every one of the 122 random bits varies across draws (none stuck by the masks).
    varying = 0
    for bit in range(128):
        varying += len({(uuid.UUID(t).int >> bit) & 1 for t in drawn}) == 2
    assert varying == 122


def test_without_tracing_a_submission_makes_no_span_and_reads_no_context(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no tracer provider installed the no-op tracer's span still cost ~8 µs and the
    propagators' injection ~3 % of a submission: neither runs while tracing is off."""
    assert create_app(settings, CATALOG).state.conveyor.traced is False

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("called while tracing is off")

    monkeypatch.setattr(opentelemetry.propagate, "inject", refuse)
    monkeypatch.setattr(conveyor.telemetry.tracing, "tracer", refuse)
    with producer_span(False, "conveyor.enqueue") as span:
        assert span is trace.INVALID_SPAN
        assert not span.is_recording()
        span.set_attribute("conveyor.task", "demo.echo")  # callers set attributes regardless
        assert current_trace_context() == {}
    with producer_span(False, "again") as again:  # the no-op is reused
        assert again is trace.INVALID_SPAN
