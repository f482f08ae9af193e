"""Fixtures of the fast layer: the API in process and a Celery-less worker, on a database
of the private test Redis (`redis_server` from tests/conftest.py) flushed before each test.

No fixture here starts a process: a test of this package costs milliseconds. Behaviour that
needs real processes, signals or timing stays in the subprocess suite (the integration tier).
"""

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from conveyor.api.app import create_app
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings
from conveyor.worker.job_signals import job_finished
from tests.fast.harness import CATALOG, InProcessApi, InProcessWorker, serve, settings_for
from tests.support.processes import RedisServer
from tests.support.receiver import Receiver, receiver

# tests/conftest.py hands out databases 1-63; 0 is the fast layer's, flushed before each test.
# One database for every test lets one app serve them all: create_app costs tens of ms, most
# of a fast test. Each test still runs the app's lifespan, with Redis clients of its own.
FAST_DB = 0
_apps: dict[str, FastAPI] = {}


@pytest.fixture
def fast_db(redis_server: RedisServer) -> int:
    """The fast layer's database, flushed: empty for this test alone."""
    client = redis_server.client(FAST_DB)
    client.flushdb()
    client.close()
    return FAST_DB


@pytest.fixture
def redis_url(redis_server: RedisServer, fast_db: int) -> str:
    return redis_server.url(fast_db)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return settings_for(redis_url)


@pytest.fixture
def redis_client(redis_server: RedisServer, fast_db: int) -> Iterator["redis.Redis"]:
    """The test's database, for assertions on what the platform wrote."""
    client = redis_server.client(fast_db)
    yield client
    client.close()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[InProcessApi]:
    """The API app of `settings` with its lifespan running (Redis connected, keys watched).

    Tests that need other settings, or two apps standing for two API processes, call
    `harness.serve` themselves: it creates a new app each time.
    """
    key = f"{settings.redis_dsn()} {settings.model_dump_json()}"
    app = _apps.get(key)
    if app is None:
        app = _apps[key] = create_app(settings, CATALOG)
    async with serve(settings, app=app) as served:
        yield served


@pytest.fixture
async def client(api: InProcessApi) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of `api`."""
    async with api.client() as http:
        yield http


@pytest.fixture
def worker(settings: Settings) -> Iterator[InProcessWorker]:
    """`JobRunner` on the test's database, with the workers' own Redis client."""
    client = sync_client(settings)
    yield InProcessWorker(client, settings)
    client.close()


@pytest.fixture
def finished() -> Iterator[list[dict[str, Any]]]:
    """Every `job_finished` the runner sends during the test, as its arguments."""
    seen: list[dict[str, Any]] = []

    def record(sender: object, **kwargs: Any) -> None:
        seen.append(kwargs)

    job_finished.connect(record, weak=False)
    yield seen
    job_finished.disconnect(record)


@pytest.fixture(scope="session")
def _receiver() -> Iterator[Receiver]:
    with receiver() as hook:  # stopping one takes half a second: one for the session
        yield hook


@pytest.fixture
def hook(_receiver: Receiver) -> Receiver:
    """A webhook receiver on loopback (allowed by the fast layer's settings), emptied."""
    _receiver.requests.clear()
    _receiver.statuses[:] = [200]
    return _receiver
