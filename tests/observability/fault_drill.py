"""A fault drill: a real Prometheus scrapes a live platform with the shipped rules while faults
are induced one at a time; it records which alerts reach firing, after how long, and that each
resolves after recovery.

The rules are `scaled_rules_text(factor)`: the shipped rules with every `for:`, range window
and evaluation interval divided by `factor` (thresholds unchanged), so the test
(test_fault_alerts.py) runs them 20 times faster. Run with factor 1 to measure the shipped
rules' time to page (minutes per fault; observability/README.md has the figures):

    .venv/bin/python -m tests.observability.fault_drill
"""

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.observability.test_prometheus_integration import Prom
from tests.support.processes import (
    Platform,
    RedisServer,
    Service,
    conveyor_argv,
    free_port,
    start_redis,
    wait_until,
)
from tools.observability.rules import scaled_rules_text

# Labels that name the release or the target, not the fault.
_CONTEXT = {"namespace", "conveyor_release", "severity", "instance", "alertname"}
# Redis persists every write, so a stop loses nothing (as the chart's AOF Redis).
_REDIS_ARGS = ("--appendonly", "yes", "--appendfsync", "always")


def alert_key(labels: dict[str, str]) -> str:
    """`Name{label=value,...}` with the labels that tell which fault (queue, task, job)."""
    detail = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in _CONTEXT)
    return f"{labels['alertname']}{{{detail}}}" if detail else labels["alertname"]


@dataclass
class Phase:
    """One fault: which alerts reached firing, seconds after the fault to each."""

    name: str
    expected: set[str]
    firing: dict[str, float] = field(default_factory=dict)
    resolved_after: float | None = None
    # Values of queries watched during the fault (query -> every value seen).
    seen: dict[str, set[float]] = field(default_factory=dict)
    # After recovery: seconds until each alert was last seen active (pending or firing).
    lingered: dict[str, float] = field(default_factory=dict)


class Alerts:
    """The active alerts of a Prometheus, polled."""

    def __init__(self, prom: Prom) -> None:
        self.prom = prom

    def active(self) -> dict[str, str]:
        """Alert key -> state (pending or firing)."""
        body = httpx.get(f"{self.prom.url}/api/v1/alerts", timeout=5).json()
        return {alert_key(a["labels"]): a["state"] for a in body["data"]["alerts"]}

    def firing(self) -> set[str]:
        """The keys of the firing alerts."""
        return {key for key, state in self.active().items() if state == "firing"}


class Drill:
    """The platform, its Prometheus, and the faults."""

    def __init__(self, work: Path, factor: float, scrape_seconds: float,
                 visibility_timeout: int) -> None:  # fmt: skip
        self.work = work
        self.factor = factor
        self.scrape_seconds = scrape_seconds
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_dir = work / "redis"
        self.redis: RedisServer = start_redis(self.redis_dir, *_REDIS_ARGS)
        self.ports = {name: free_port() for name in ("high", "default", "beat", "exporter", "api")}
        schedule = work / "schedule.yaml"
        # A periodic job on the high tier: beat's panels have a schedule, default stays empty.
        schedule.write_text("schedules:\n  - {name: ping, task: demo.echo, interval_seconds: 2,"
                            " queue: high}\n")  # fmt: skip
        self.platform = Platform(
            self.redis, 0, self.logs,
            CONVEYOR_METRICS__BEAT_PORT=str(self.ports["beat"]),
            CONVEYOR_METRICS__API_PORT=str(self.ports["api"]),
            CONVEYOR_METRICS__EXPORTER_PORT=str(self.ports["exporter"]),
            CONVEYOR_WORKER__VISIBILITY_TIMEOUT_SECONDS=str(visibility_timeout),
            CONVEYOR_SCHEDULE_FILE=str(schedule),
        )  # fmt: skip
        self.workers: dict[str, Service] = {}
        self.beat: Service | None = None
        self.exporter: Service | None = None
        self.phases: list[Phase] = []
        self.notes: list[str] = []
        # Longest wait for a page or a resolution: the slowest rule's window (15 minutes)
        # scaled, with room for the platform's own delays.
        self.timeout = max(60.0, 20 * 60 / factor)

    # --- processes ---------------------------------------------------------------------------

    def start(self, prometheus: str) -> Prom:
        """Start every service and a Prometheus scraping them with the scaled rules."""
        self.platform.start_api()
        for queue in ("high", "default"):
            self.start_worker(queue)
        self.start_beat()
        self.start_exporter()
        rules = self.work / "rules.yml"
        rules.write_text(scaled_rules_text(self.factor))
        targets = {f"worker-{q}": self.ports[q] for q in ("high", "default")}
        targets |= {"api": self.ports["api"], "beat": self.ports["beat"],
                    "exporter": self.ports["exporter"]}  # fmt: skip
        scope = "{namespace: jobs, conveyor_release: conveyor}"
        interval = f"{round(self.scrape_seconds * 1000)}ms"
        config = self.work / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {interval}, scrape_timeout: {interval},"
            f" evaluation_interval: {interval}}}\n"
            f"rule_files: ['{rules}']\n"
            "scrape_configs:\n"
            + "".join(f"  - job_name: {name}\n    static_configs: [{{targets: "
                      f"['127.0.0.1:{port}'], labels: {scope}}}]\n"
                      for name, port in targets.items())
        )  # fmt: skip
        prom_port = free_port()
        self.platform.start("prometheus", [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={self.work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}"])  # fmt: skip
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        wait_until(lambda: _targets_up(prom) == len(targets), 60, "every target scraped", 0.5)
        return prom

    def start_worker(self, queue: str) -> None:
        self.workers[queue] = self.platform.start_worker(
            queue, CONVEYOR_METRICS__WORKER_PORT=str(self.ports[queue])
        )

    def start_beat(self) -> None:
        self.beat = self.platform.start("beat", conveyor_argv("beat"))
        self.beat.wait_for_log("Acquired lock")

    def start_exporter(self) -> None:
        self.exporter = self.platform.start("exporter", conveyor_argv("exporter"))
        url = f"http://127.0.0.1:{self.ports['exporter']}/metrics"
        wait_until(lambda: _answers(url), 30, "the exporter", 0.1)

    def stop_redis(self) -> None:
        self.redis.process.terminate()
        self.redis.process.wait(10)

    def start_redis(self) -> None:
        self.redis = start_redis(self.redis_dir, *_REDIS_ARGS, port=self.redis.port)

    def stop(self) -> None:
        self.platform.stop()
        with contextlib.suppress(ProcessLookupError):
            self.redis.process.terminate()
        self.redis.process.wait(10)

    # --- faults ------------------------------------------------------------------------------

    def fault(
        self,
        alerts: Alerts,
        name: str,
        expected: set[str],
        inject: Callable[[], None],
        recover: Callable[[], None],
        during: Callable[[], None] = lambda: None,
        watch: tuple[str, ...] = (),
        resolve: bool = True,
    ) -> Phase:
        """Inject, wait until every expected alert fires (calling `during` and recording the
        values of the `watch` queries meanwhile), recover, then wait until no alert is active
        any more (unless `resolve` is False)."""
        phase = Phase(name, expected)
        self.phases.append(phase)
        started = time.monotonic()
        inject()

        def fired() -> bool:
            during()
            for expr in watch:
                phase.seen.setdefault(expr, set()).update(alerts.prom.query(expr).values())
            for key in alerts.firing():
                phase.firing.setdefault(key, round(time.monotonic() - started, 1))
            return expected <= set(phase.firing)

        wait_until(fired, self.timeout, f"{name}: {expected - set(phase.firing)} to fire",
                   step=0.25)  # fmt: skip
        recover()
        if not resolve:
            return phase
        recovered = time.monotonic()

        def quiet() -> bool:
            active = alerts.active()
            for key, state in active.items():
                if state == "firing":
                    phase.firing.setdefault(key, round(time.monotonic() - started, 1))
                phase.lingered[f"{key} ({state})"] = round(time.monotonic() - recovered, 1)
            return not active

        wait_until(quiet, self.timeout, f"{name}: every alert to resolve", step=0.25)
        phase.resolved_after = round(time.monotonic() - recovered, 1)
        return phase

    def report(self) -> str:
        """The phases as a table: alert, seconds to firing, seconds to resolve after recovery."""
        lines = [f"fault drill: rules' durations / {self.factor:g}, "
                 f"scrape and evaluation every {self.scrape_seconds:g} s"]  # fmt: skip
        for phase in self.phases:
            lines.append(f"{phase.name} (resolved {phase.resolved_after} s after recovery)")
            lines += [
                f"    {key}: firing after {seconds} s"
                for key, seconds in sorted(phase.firing.items(), key=lambda kv: kv[1])
            ]
            lines += [
                f"    after recovery, {key} until {seconds} s"
                for key, seconds in sorted(phase.lingered.items(), key=lambda kv: kv[1])
            ]
        return "\n".join(lines + self.notes)


def run(
    drill: Drill, prometheus: str, resolve_last: bool = True, watch_dead_tier: str = ""
) -> Iterator[tuple[str, Any]]:
    """Run the faults in order, yielding (checkpoint, value) for the caller's assertions:
    ("healthy", prom) once the platform is up and quiet, then ("phase", Phase) per fault
    (`watch_dead_tier`: a query whose values are recorded while the default tier is dead).
    """
    prom = drill.start(prometheus)
    alerts = Alerts(prom)
    client = drill.platform.http()
    try:
        # Some finished jobs for the rate panels, in two rounds scraped apart: a histogram's
        # series appears with its first observation, so only a later round gives its buckets
        # an increase over the rate window (one round alone left the quantile panels empty
        # when the jobs finished before the worker's first scrape).
        for round_ in (1, 2):
            for i in range(5):
                client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": i}})
            wait_until(lambda r=round_: (prom.value(
                'sum(conveyor_jobs_completed_total{outcome="succeeded"})') or 0) >= 5 * r,
                30, "jobs to finish", 0.5)  # fmt: skip
        wait_until(lambda: not alerts.active(), 30, "a quiet start", 0.5)
        yield "healthy", prom

        def kill_default() -> None:
            os.killpg(drill.workers["default"].pid, signal.SIGKILL)

        yield "phase", drill.fault(
            alerts, "worker tier default SIGKILLed",
            {"ConveyorTierWithoutWorkers{queue=default}",
             "ConveyorScrapeTargetDown{job=worker-default}"},
            inject=kill_default, recover=lambda: drill.start_worker("default"),
            watch=(watch_dead_tier,) if watch_dead_tier else (),
        )  # fmt: skip

        def stop_exporter() -> None:
            assert drill.exporter is not None
            drill.exporter.stop()

        yield "phase", drill.fault(
            alerts, "exporter stopped",
            {"ConveyorMetricsAbsent", "ConveyorScrapeTargetDown{job=exporter}"},
            inject=stop_exporter, recover=drill.start_exporter,
        )  # fmt: skip

        def submit() -> None:
            with contextlib.suppress(httpx.TransportError):
                client.post("/v1/jobs", json={"task": "demo.echo"})

        def restart_redis() -> None:
            drill.start_redis()
            assert drill.beat is not None
            if drill.beat.process.poll() is not None:  # beat does not survive it (yet)
                drill.notes.append("beat exited while Redis was down; restarted")
                drill.start_beat()

        yield "phase", drill.fault(
            alerts, "Redis stopped",
            {"ConveyorRedisUnreachable", "ConveyorSubmissionsFailing",
             "ConveyorApiErrorRatioHigh"},
            inject=drill.stop_redis, recover=restart_redis, during=submit,
        )  # fmt: skip

        dead: list[str] = []

        def dead_letter() -> None:
            job = client.post(
                "/v1/jobs",
                json={"task": "demo.fail", "args": {"mode": "retryable"}, "max_retries": 0},
            ).json()
            dead.append(job["id"])

        def purge() -> None:
            assert client.delete(f"/v1/dead-letters/{dead[0]}").json() == {"count": 1}

        yield "phase", drill.fault(
            alerts, "a job dead-lettered (then purged)",
            {"ConveyorDeadLettersGrowing{queue=default,task=demo.fail}",
             "ConveyorDeadLettersPresent"},
            inject=dead_letter, recover=purge, resolve=resolve_last,
        )  # fmt: skip
    finally:
        client.close()


def _targets_up(prom: Prom) -> int:
    try:
        return int(prom.value("sum(up)") or 0)
    except (httpx.TransportError, ValueError):  # not listening yet, or still starting up
        return 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def main() -> int:
    """The shipped durations (factor 1), scrape and evaluation every 2 s, the default
    visibility timeout: each fault's time to page. Takes about a quarter of an hour."""
    import shutil

    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is installed by `make test` (Debian package prometheus)"
    with tempfile.TemporaryDirectory() as work:
        drill = Drill(Path(work), factor=1, scrape_seconds=2, visibility_timeout=60)
        try:
            for checkpoint, value in run(drill, prometheus, resolve_last=False):
                if checkpoint == "phase":
                    print(f"{value.name}: {value.firing}", file=sys.stderr, flush=True)
        finally:
            drill.stop()
        print(drill.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
