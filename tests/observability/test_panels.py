"""What the panels show when it matters, evaluated by promtool on the dashboards' own queries:
a dead tier's time to drain says "no consumers", beat's stats read 0 and a growing age while
beat is down, ratios read 0 (not "no data") before anything failed."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.test_artifacts import variables
from tools.observability.dashboards import (
    DASHBOARDS,
    NO_CONSUMERS,
    NOT_DRAINING,
    Panel,
)

PROMTOOL = shutil.which("promtool")
SCOPE = {"namespace": "jobs", "conveyor_release": "conveyor"}


def panel(title: str, dashboard: str = "") -> Panel:
    (found,) = [p for d in DASHBOARDS if d.uid.endswith(dashboard) for p in d.panels
                if p.title == title]  # fmt: skip
    return found


def query(title: str, dashboard: str = "") -> str:
    (expr, _), *_ = panel(title, dashboard).exprs
    return variables(expr)


def series(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in {**labels, **SCOPE}.items()) + "}"


def evaluate(inputs: dict[str, str], checks: list[dict[str, Any]], tmp_path: Path) -> str:
    """'' if every promql_expr_test in `checks` passes on `inputs` (1-minute steps)."""
    assert PROMTOOL, "promtool is installed by `make test` (Debian package prometheus)"
    document = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in inputs.items()],
        "promql_expr_test": checks}]}  # fmt: skip
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", path.name], capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    return "" if result.returncode == 0 else result.stdout + result.stderr


def check(title: str, at: str, *expected: dict[str, Any], dashboard: str = "") -> dict[str, Any]:
    return {"expr": query(title, dashboard), "eval_time": at, "exp_samples": list(expected)}


def sample(value: float, **labels: str) -> dict[str, Any]:
    return {"labels": "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
            "value": value}  # fmt: skip


def test_time_to_drain_names_a_tier_without_consumers(tmp_path: Path) -> None:
    drain = panel("Time to drain at the current rate")
    assert drain.mappings == {str(NO_CONSUMERS): "no consumers", str(NOT_DRAINING): "not draining"}
    completed = "conveyor_jobs_completed_total"
    inputs = {
        # default: its worker was killed at 6m with 3 jobs waiting (60 finished a minute before)
        series("conveyor_workers", queue="default"): "1x5 0x9",
        series("conveyor_queue_length", queue="default"): "3x15",
        series(completed, queue="default", task="demo.echo", outcome="succeeded"): "0+60x5 300x9",
        # high: idle, empty
        series("conveyor_workers", queue="high"): "1x15",
        series("conveyor_queue_length", queue="high"): "0x15",
        series(completed, queue="high", task="demo.echo", outcome="succeeded"): "0x15",
        # low: 600 waiting, 60 finish a minute; after 10m workers live but finish nothing
        series("conveyor_workers", queue="low"): "2x15",
        series("conveyor_queue_length", queue="low"): "600x15",
        series(completed, queue="low", task="demo.sleep", outcome="succeeded"):
            "0+60x9 540x5",
    }  # fmt: skip
    at_5m = [sample(3, queue="default"), sample(0, queue="high"), sample(600, queue="low")]
    at_14m = [sample(NO_CONSUMERS, queue="default"), sample(0, queue="high"),
              sample(NOT_DRAINING, queue="low")]  # fmt: skip
    checks = [check(drain.title, "5m", *at_5m), check(drain.title, "14m", *at_14m)]
    report = evaluate(inputs, checks, tmp_path)
    assert report == "", report


def test_beat_stats_read_zero_leaders_and_a_growing_age_while_beat_is_down(
    tmp_path: Path,
) -> None:
    inputs = {
        # beat ticked every minute, then died at 5m (its series went stale); its target stays
        series("conveyor_beat_leader", instance="beat"): "1x5 stale",
        series("conveyor_beat_last_tick_timestamp_seconds", instance="beat"): "0+60x5 stale",
        series("conveyor_beat_schedule_last_run_timestamp_seconds", schedule="ping"):
            "0+60x5 stale",
        series("conveyor_beat_runs_total", schedule="ping"): "0+1x5 stale",
        series("up", instance="beat"): "1x5 0x10",
        series("up", instance="exporter"): "1x15",
    }  # fmt: skip
    checks = [
        check("Leaders", "3m", sample(1)),
        check("Leaders", "10m", sample(0)),
        check("Since the last tick", "3m", sample(0)),
        check("Since the last tick", "10m", sample(600 - 300)),
        check("Since each schedule's last run", "12m", sample(720 - 300, schedule="ping")),
        check("Submissions per minute, by schedule", "5m", sample(1, schedule="ping")),
    ]
    report = evaluate(inputs, checks, tmp_path)
    assert report == "", report


def test_no_schedule_has_run_yet_is_an_explicit_zero(tmp_path: Path) -> None:
    inputs = {series("up", instance="beat"): "1x10"}
    report = evaluate(inputs, [check("Submissions per minute, by schedule", "5m", sample(0))],
                      tmp_path)  # fmt: skip
    assert report == "", report


@pytest.mark.parametrize("failing", [False, True], ids=["healthy", "failing"])
def test_ratios_read_zero_before_anything_failed(failing: bool, tmp_path: Path) -> None:
    """The counters the workers and the API create at 0 (and requests without any 5xx): every
    ratio reads 0, also over a window in which nothing finished; a failure shows."""
    completed = "conveyor_jobs_completed_total"
    failed = "0+30x20" if failing else "0x20"
    inputs = {
        series(completed, queue="default", task="demo.echo", outcome="succeeded"): "0+30x10 300x10",
        series(completed, queue="default", task="demo.echo", outcome="failed"): failed,
        series(completed, queue="default", task="demo.echo", outcome="retried"): "0x20",
        series("conveyor_http_requests_total", method="GET", route="/healthz", status="200"):
            "0+60x20",
    }  # fmt: skip
    if failing:  # half the attempts fail, then every one does
        inputs[series("conveyor_job_failures_total", queue="default", task="demo.echo",
                      exception="PermanentError")] = failed  # fmt: skip
        expected = {"5m": 0.5, "18m": 1.0}
        by_exception = sample(0.5, task="demo.echo", exception="PermanentError")
    else:  # nothing finished in the last 5 minutes at 18m: still 0, not NaN
        expected = {"5m": 0.0, "18m": 0.0}
        by_exception = sample(0, task="demo.echo")
    checks = [check("Failure ratio", at, sample(value, queue="default"), dashboard="overview")
              for at, value in expected.items()]  # fmt: skip
    checks += [check("Failure ratio", at, sample(value, task="demo.echo"), dashboard="tasks")
               for at, value in expected.items()]  # fmt: skip
    checks.append(check("Failures by exception", "5m", by_exception))
    checks.append(check("5xx ratio", "5m", sample(0)))
    report = evaluate(inputs, checks, tmp_path)
    assert report == "", report


def test_finished_excludes_retried_attempts(tmp_path: Path) -> None:
    completed = "conveyor_jobs_completed_total"
    inputs = {
        series(completed, queue="default", task="demo.fail", outcome="retried"): "0+600x10",
        series(completed, queue="default", task="demo.fail", outcome="failed"): "0+60x10",
        series(completed, queue="default", task="demo.echo", outcome="succeeded"): "0+60x10",
        series(completed, queue="default", task="demo.echo", outcome="cancelled"): "0+60x10",
    }
    report = evaluate(inputs, [check("Jobs finished per second", "5m", sample(3, queue="default"))],
                      tmp_path)  # fmt: skip
    assert report == "", report
