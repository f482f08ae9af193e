"""A real Prometheus scrapes the API, workers, beat and the exporter while jobs run, with the
shipped rules loaded; the dashboards' queries run against it."""

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_db
from tests.observability.test_artifacts import variables
from tests.support.processes import (
    TERMINAL,
    Platform,
    RedisServer,
    conveyor_argv,
    free_port,
    wait_for_job,
    wait_until,
)
from tools.observability import artifacts
from tools.observability.dashboards import DASHBOARDS

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

    def query(self, expr: str, at: float | None = None) -> dict[tuple[tuple[str, str], ...], float]:
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=5).json()
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
             "exporter": free_port(), "api": free_port()}  # fmt: skip
    platform = Platform(
        redis_server, fresh_db(redis_server), log_dir,
        CONVEYOR_METRICS__BEAT_PORT=str(ports["beat"]),
        CONVEYOR_METRICS__API_PORT=str(ports["api"]),
        CONVEYOR_METRICS__EXPORTER_PORT=str(ports["exporter"]),
        CONVEYOR_API__WORKERS="2",
    )  # fmt: skip
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    targets = {
        "api": f"127.0.0.1:{ports['api']}",
        "worker-high": f"127.0.0.1:{ports['high']}",
        "worker-default": f"127.0.0.1:{ports['default']}",
        "beat": f"127.0.0.1:{ports['beat']}",
        "exporter": f"127.0.0.1:{ports['exporter']}",
    }
    # Without prometheus-operator, the scrape config adds the scope labels (README).
    scope = "{namespace: jobs, conveyor_release: conveyor}"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{artifacts.RULES}']\n"
        "scrape_configs:\n"
        + "".join(
            f"  - job_name: {name}\n    static_configs: [{{targets: ['{t}'], labels: {scope}}}]\n"
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
            # Each target is scraped on its own schedule: the API's may come last.
            accepted = prom.value(
                'sum(conveyor_api_submissions_total{outcome="accepted"})') or 0  # fmt: skip
            return completed >= 11 and waits >= 11 and accepted >= 16

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
        check_dashboards(prom)
        check_rules(prom)
    finally:
        platform.stop()

    for name, text in pages.items():
        assert "conveyor_" in text, name
        promtool_check_metrics(text)


def check_dashboards(prom: Prom) -> None:
    """The dashboards' variables list this release, and their panels show what the same
    queries without the scope show (one release here), and nothing for another namespace."""
    at = time.time()
    label_values = re.compile(r"label_values\((.+), (\w+)\)")
    for dashboard in DASHBOARDS:
        for variable in dashboard.model()["templating"]["list"][1:]:
            match = label_values.fullmatch(variable["query"]["query"])
            assert match, variable["query"]
            series, label = match.groups()
            found = prom.query(f"group by ({label}) ({variables(series)})")
            assert found, (dashboard.uid, variable["name"])
            if variable["name"] in ("namespace", "release"):
                value = {"namespace": "jobs", "release": "conveyor"}[variable["name"]]
                assert found == {((label, value),): 1}, (dashboard.uid, variable["name"])
    shown = set()
    for dashboard in DASHBOARDS:
        for panel in dashboard.panels:
            for expr, _ in panel.exprs:
                scoped = _comparable(prom.query(variables(expr), at))
                everything = variables(expr).replace(
                    'namespace="jobs",conveyor_release="conveyor"',
                    'namespace=~".*",conveyor_release=~".*"',
                )
                assert everything != variables(expr)
                assert scoped == _comparable(prom.query(everything, at)), expr
                assert prom.query(variables(expr, namespace="elsewhere"), at) == {}, expr
                if scoped:
                    shown.add(f"{dashboard.uid}: {panel.title}")
    core = {"conveyor-overview: Queue depth", "conveyor-overview: Job records by state",
            "conveyor-workers: Active jobs vs job slots", "conveyor-tasks: Outcomes per second",
            "conveyor-api: Requests per second", "conveyor-beat: Leaders"}  # fmt: skip
    assert core <= shown, "panels without data prove nothing"


def _comparable(result: dict[tuple[tuple[str, str], ...], float]) -> dict[object, str]:
    return {key: repr(value) for key, value in result.items()}  # NaN == NaN


def check_rules(prom: Prom) -> None:
    """The standalone rules load, evaluate, and keep the scope labels."""

    def recorded() -> dict[tuple[tuple[str, str], ...], float]:
        return prom.query("queue:conveyor_worker_saturation:ratio")

    wait_until(recorded, 45, "the recording rules to run", step=1)
    assert {dict(key)["namespace"] for key in recorded()} == {"jobs"}
    assert {dict(key)["conveyor_release"] for key in recorded()} == {"conveyor"}
    body = httpx.get(f"{prom.url}/api/v1/rules", timeout=5).json()
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    assert len(rules) == len(re.findall(r"- (record|alert):", artifacts.RULES.read_text()))
    assert [r["name"] for r in rules if r["health"] == "err"] == []


def _up(prom: Prom) -> int:
    try:
        return int(prom.value("sum(up)") or 0)
    except (httpx.TransportError, ValueError):  # not listening yet, or still starting up
        return 0
