"""The message the API writes is a normal Celery message: a stock Celery worker, with
Conveyor's transport, runs it."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import fresh_db
from tests.support.processes import Platform, RedisServer, wait_until

pytestmark = pytest.mark.slow


def test_stock_celery_worker_consumes_api_messages(
    redis_server: RedisServer, log_dir: Path
) -> None:
    platform = Platform(redis_server, fresh_db(redis_server), log_dir)
    try:
        platform.start_api()
        stock = platform.start(
            "stock-worker",
            [sys.executable, "-m", "celery", "-A", "tests.support.stock_app", "-b",
             platform.redis_url, "worker", "-Q", "default", "-c", "1", "--without-gossip",
             "--without-mingle", "--loglevel", "INFO"],
        )  # fmt: skip
        stock.wait_for_log(" ready.", timeout=40)
        with platform.http() as client:
            job = client.post(
                "/v1/jobs", json={"task": "demo.echo", "args": {"payload": {"hello": "celery"}}}
            ).json()
        raw = wait_until(
            lambda: platform.redis.get(f"stock:{job['id']}"), 30, "the stock worker to run it"
        )
        assert json.loads(raw) == {"payload": {"hello": "celery"}, "retries": 0}
        # The task's write lands before the worker logs its success: wait for the line.
        stock.wait_for_log(f"demo.echo[{job['id']}] succeeded", timeout=30)
    finally:
        platform.stop()
