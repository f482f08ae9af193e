"""What the accept path must not spend CPU on (bench/README.md §1 measured each of these).
Structural checks: timings are the benchmarks' business, never a test's."""

from typing import Any

import fastapi.dependencies.utils
import fastapi.routing
import httpx
import pytest

from conveyor.api.app import create_app
from conveyor.core.settings import Settings
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
