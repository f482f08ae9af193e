"""Multiprocess metrics: a dead process's live gauges disappear at the next scrape; its
counters stay counted. Job counters exist at 0 from the start."""

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from conveyor.telemetry import prometheus as prom
from conveyor.telemetry.metrics import OUTCOMES, SUBMISSION_OUTCOMES, ApiMetrics

CHILD = """
import sys
from pathlib import Path
from conveyor.telemetry.prometheus import enable_multiprocess
enable_multiprocess(Path(sys.argv[1]))
from conveyor.telemetry.metrics import WorkerMetrics
metrics = WorkerMetrics(None)
metrics.active.labels("default").inc(3)
metrics.started.labels("default", "demo.echo").inc(7)
"""


def test_dead_process_gauges_are_retired_counters_kept(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    subprocess.run([sys.executable, "-c", CHILD, str(directory)], check=True)
    assert list(directory.glob("gauge_livesum_*.db")), "the child wrote a live gauge"

    collector = prom._PruningCollector(directory)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()

    assert 'conveyor_jobs_started_total{queue="default",task="demo.echo"} 7.0' in text
    assert "conveyor_worker_active_jobs{" not in text
    assert not list(directory.glob("gauge_livesum_*.db"))


WORKER_MAIN = """
import sys
from pathlib import Path
from conveyor.telemetry.prometheus import enable_multiprocess
enable_multiprocess(Path(sys.argv[1]))
from conveyor.telemetry.metrics import WorkerMetrics
metrics = WorkerMetrics(None)
metrics.count_from_zero(["default"], ["demo.echo", "demo.fail"])
print("ready", flush=True)
sys.stdin.read()  # alive until the test closes stdin
"""

JOB_CHILD = """
import os
import sys
import prometheus_client.values as values
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
values.ValueClass = values.MultiProcessValue()
from conveyor.telemetry.metrics import WorkerMetrics
metrics = WorkerMetrics(None)
metrics.active.labels("default").inc()  # killed while running a job: never decremented
metrics.started.labels("default", "demo.echo").inc()
"""


def test_counters_start_at_zero_and_active_jobs_outlive_replaced_children(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "metrics"
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_MAIN, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as main:
        assert main.stdout is not None
        assert main.stdin is not None
        assert main.stdout.readline().strip() == "ready"
        subprocess.run([sys.executable, "-c", JOB_CHILD, str(directory)], check=True)
        registry = CollectorRegistry()
        registry.register(prom._PruningCollector(directory))
        text = generate_latest(registry).decode()
        main.stdin.close()  # the main process exits

    for task in ("demo.echo", "demo.fail"):
        for outcome in OUTCOMES:
            assert (f'conveyor_jobs_completed_total{{outcome="{outcome}",queue="default",'
                    f'task="{task}"}} 0.0') in text  # fmt: skip
        for counter in ("retries", "redeliveries"):
            assert f'conveyor_job_{counter}_total{{queue="default",task="{task}"}} 0.0' in text
        assert f'conveyor_jobs_dead_lettered_total{{queue="default",task="{task}"}} 0.0' in text
    assert 'conveyor_jobs_started_total{queue="default",task="demo.echo"} 1.0' in text
    # The job child died: its 1 is gone, the main process's 0 keeps the tier's series.
    assert 'conveyor_worker_active_jobs{queue="default"} 0.0' in text


def test_every_submission_outcome_starts_at_zero() -> None:
    registry = CollectorRegistry()
    ApiMetrics(registry)
    text = generate_latest(registry).decode()
    for outcome in SUBMISSION_OUTCOMES:
        assert f'conveyor_api_submissions_total{{outcome="{outcome}"}} 0.0' in text
