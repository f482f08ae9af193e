"""Multiprocess metrics: a dead process's live gauges disappear at the next scrape; its
counters stay counted."""

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from conveyor.telemetry import prometheus as prom

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
