"""A real Prometheus scrapes the API, workers, beat and the exporter while jobs run."""

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_db
from tests.support.processes import (
    TERMINAL,
    Platform,
    RedisServer,
    conveyor_argv,
    free_port,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def promtool_check_metrics(text: str) -> None:
    assert PROMTOOL, "promtool is installed by `make test` (Debian package prometheus)"
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("instance", "job"))):
            float(r["value"][1])
            for r in body["data"]["result"]
        }  # fmt: skip

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return next(iter(result.values())) if result else None


def test_prometheus_sees_depth_failures_and_wait_times(
    redis_server: RedisServer, log_dir: Path, tmp_path: Path
) -> None:
    assert PROMETHEUS, "prometheus is installed by `make test` (Debian package prometheus)"
    ports = {"high": free_port(), "default": free_port(), "beat": free_port(),
             "exporter": free_port()}  # fmt: skip
    platform = Platform(
        redis_server, fresh_db(redis_server), log_dir,
        CONVEYOR_METRICS__BEAT_PORT=str(ports["beat"]),
        CONVEYOR_METRICS__EXPORTER_PORT=str(ports["exporter"]),
        CONVEYOR_API__WORKERS="2",
    )  # fmt: skip
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    targets = {
        "api": f"127.0.0.1:{platform.api_port}",
        "worker-high": f"127.0.0.1:{ports['high']}",
        "worker-default": f"127.0.0.1:{ports['default']}",
        "beat": f"127.0.0.1:{ports['beat']}",
        "exporter": f"127.0.0.1:{ports['exporter']}",
    }
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        + "".join(
            f"  - job_name: {name}\n    static_configs: [{{targets: ['{t}']}}]\n"
            for name, t in targets.items()
        )
    )
    try:
        platform.start_api()
        platform.start_worker("high", CONVEYOR_METRICS__WORKER_PORT=str(ports["high"]))
        platform.start_worker("default", CONVEYOR_METRICS__WORKER_PORT=str(ports["default"]))
        platform.start("beat", conveyor_argv("beat")).wait_for_log("Acquired lock")
        platform.start("exporter", conveyor_argv("exporter"))
        platform.start("prometheus", [
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}"])  # fmt: skip
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        wait_until(lambda: _up(prom) == 5, 60, "Prometheus to scrape all five targets", step=0.5)

        with platform.http() as client:
            ok = [client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": i}})
                  .json()["id"] for i in range(6)]  # fmt: skip
            bad = [client.post("/v1/jobs", json={"task": "demo.fail"}).json()["id"]
                   for _ in range(3)]  # fmt: skip
            high = [client.post("/v1/jobs", json={"task": "demo.echo", "priority": "high"})
                    .json()["id"] for _ in range(2)]  # fmt: skip
            # No low-tier worker runs: these wait, and the exporter must see them.
            for _ in range(5):
                client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 1}})
            client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": -1}})
            for job_id in ok + bad + high:
                wait_for_job(client, job_id, TERMINAL)

            pages = {name: httpx.get(f"http://{t}/metrics", timeout=5).text
                     for name, t in targets.items()}  # fmt: skip

        def settled() -> bool:
            completed = prom.value("sum(conveyor_jobs_completed_total)") or 0
            waits = prom.value("sum(conveyor_job_queue_wait_seconds_count)") or 0
            return completed >= 11 and waits >= 11

        wait_until(settled, 30, "Prometheus to see the finished jobs", step=0.5)
        wait_until(lambda: prom.value('conveyor_queue_length{queue="low"}') == 5, 30,
                   "the exporter's low-tier depth", step=0.5)  # fmt: skip

        completed = prom.query("sum by (task, outcome) (conveyor_jobs_completed_total)")
        assert completed[(("outcome", "succeeded"), ("task", "demo.echo"))] == 8
        assert completed[(("outcome", "failed"), ("task", "demo.fail"))] == 3
        failures = prom.query("sum by (exception) (conveyor_job_failures_total)")
        assert failures == {(("exception", "PermanentError"),): 3}
        waits = prom.query("sum by (queue) (conveyor_job_queue_wait_seconds_count)")
        assert waits == {(("queue", "default"),): 9, (("queue", "high"),): 2}
        assert prom.value("sum(conveyor_job_runtime_seconds_count)") == 11
        assert prom.value('conveyor_workers{queue="default"}') == 1
        assert prom.value('conveyor_workers{queue="low"}') == 0
        assert prom.value('conveyor_queue_oldest_message_age_seconds{queue="low"}') > 0
        assert prom.value('conveyor_worker_concurrency{queue="default"}') == 2
        assert prom.value("sum(conveyor_worker_active_jobs)") == 0
        assert prom.value("conveyor_beat_leader") == 1
        assert prom.value("time() - conveyor_beat_last_tick_timestamp_seconds") < 30
        submissions = prom.query("sum by (outcome) (conveyor_api_submissions_total)")
        assert submissions[(("outcome", "accepted"),)] == 16
        assert submissions[(("outcome", "rejected"),)] == 1
        routes = prom.query('sum by (route) (conveyor_http_requests_total{method="POST"})')
        assert routes == {(("route", "/v1/jobs"),): 17}
        assert prom.query('conveyor_http_requests_total{route="/v1/jobs/{job_id}"}')
        labels = {k for key in prom.query("{__name__=~'conveyor_.+'}") for k, _ in key}
        assert not labels & {"pod", "hostname", "pid", "job_id", "worker"}, labels
    finally:
        platform.stop()

    for name, text in pages.items():
        assert "conveyor_" in text, name
        promtool_check_metrics(text)


def _up(prom: Prom) -> int:
    try:
        return int(prom.value("sum(up)") or 0)
    except (httpx.TransportError, ValueError):  # not listening yet, or still starting up
        return 0
