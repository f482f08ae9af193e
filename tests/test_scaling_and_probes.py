"""The signals Kubernetes acts on, read from real processes: a tier's demand (KEDA), the
worker's HTTP probes, and the API's metrics port."""

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fresh_db
from tests.support.processes import (
    Platform,
    RedisServer,
    conveyor_argv,
    free_port,
    wait_for_job,
    wait_until,
)


@pytest.fixture
def platform(redis_server: RedisServer, log_dir: Path) -> Iterator[Platform]:
    platform = Platform(
        redis_server,
        fresh_db(redis_server),
        log_dir,
        CONVEYOR_METRICS__API_PORT=str(free_port()),
        CONVEYOR_METRICS__EXPORTER_PORT=str(free_port()),
        CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS="30",
    )
    yield platform
    platform.stop()


def _scaling(port: int, queue: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/scaling/{queue}", timeout=5)


def _exporter(platform: Platform) -> int:
    port = int(platform.env_overrides["CONVEYOR_METRICS__EXPORTER_PORT"])
    platform.start("exporter", conveyor_argv("exporter"))
    wait_until(lambda: _reachable(f"http://127.0.0.1:{port}/metrics"), 30, "the exporter")
    return port


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.TransportError:
        return False


def test_demand_counts_waiting_and_running_jobs_not_future_ones(platform: Platform) -> None:
    platform.start_api()
    port = _exporter(platform)
    worker = platform.start_worker("low", CONVEYOR_WORKER__CONCURRENCY="2")
    with platform.http() as client:
        running = [client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 30}})
                   .json()["id"] for _ in range(2)]  # fmt: skip
        for job_id in running:
            wait_for_job(client, job_id, {"running"})
        for _ in range(3):  # no free slot: these wait on the list
            client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 1}})
        client.post("/v1/jobs", json={"task": "demo.echo", "delay_seconds": 600})  # not due
        client.post("/v1/jobs", json={"task": "demo.echo", "priority": "high"})  # no high worker

        wait_until(lambda: _scaling(port, "low").json()["waiting"] == 3, 10, "3 waiting")
        assert _scaling(port, "low").json() == {
            "queue": "low", "waiting": 3, "running": 2, "demand": 5,
        }  # fmt: skip
        assert _scaling(port, "high").json()["demand"] == 1
        assert _scaling(port, "default").json()["demand"] == 0
        assert _scaling(port, "urgent").status_code == 404

        families = {
            (s.name, s.labels.get("queue")): s.value
            for f in text_string_to_metric_families(
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            )
            for s in f.samples
        }
        assert families[("conveyor_queue_demand", "low")] == 5
        assert families[("conveyor_queue_running", "low")] == 2

        # A cancelled running job leaves the running set; so does a finished one.
        assert client.post(f"/v1/jobs/{running[0]}/cancel?terminate=true").status_code == 200
        wait_until(lambda: _scaling(port, "low").json()["running"] <= 2, 10, "the cancel")
        worker.signal(signal.SIGKILL)  # a dead worker's jobs still count: they come back
        assert _scaling(port, "low").json()["demand"] >= 3


def test_demand_is_an_error_not_a_zero_when_redis_is_down(
    redis_server: RedisServer, log_dir: Path
) -> None:
    port = free_port()
    closed = free_port()
    platform = Platform(redis_server, 0, log_dir, CONVEYOR_METRICS__EXPORTER_PORT=str(port),
                        CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{closed}/0")  # fmt: skip
    try:
        platform.start("exporter", conveyor_argv("exporter"), CONVEYOR_REDIS_DURABILITY_CHECK="off")
        wait_until(lambda: _reachable(f"http://127.0.0.1:{port}/metrics"), 30, "the exporter")
        response = _scaling(port, "default")
        assert response.status_code == 503
        assert "demand" not in response.json()
    finally:
        platform.stop()


def test_worker_probes_over_http_and_draining_is_live_but_not_ready(
    platform: Platform,
) -> None:
    port = free_port()
    platform.start_api()
    worker = platform.start_worker(
        "low", CONVEYOR_METRICS__WORKER_PORT=str(port), CONVEYOR_WORKER__CONCURRENCY="1"
    )
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
    ready = httpx.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert "conveyor_worker_concurrency" in httpx.get(f"{base}/metrics", timeout=5).text
    with platform.http() as client:
        job = client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 6}}).json()
        wait_for_job(client, job["id"], {"running"})
        worker.signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 503, 10,
                   "readiness to drop on SIGTERM")  # fmt: skip
        live = httpx.get(f"{base}/livez", timeout=5)
        assert live.status_code == 200
        assert "draining" in live.text
        assert wait_for_job(client, job["id"], {"succeeded"}, timeout=20)["attempts"] == 1
    assert worker.process.wait(20) == 0


def test_api_metrics_are_on_their_own_port(platform: Platform) -> None:
    platform.start_api()
    port = platform.env_overrides["CONVEYOR_METRICS__API_PORT"]
    with platform.http() as client:
        client.get("/v1/tasks")
        assert client.get("/metrics").status_code == 404
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    requests = [s for f in text_string_to_metric_families(page) for s in f.samples
                if s.name == "conveyor_http_requests_total"]  # fmt: skip
    assert any(s.labels["route"] == "/v1/tasks" for s in requests)
