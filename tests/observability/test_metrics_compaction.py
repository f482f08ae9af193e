"""A dead process's metric files are folded into an archive: its counts survive it, and the
multiprocess directory does not grow with every process that ever lived."""

import multiprocessing
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from conveyor.telemetry import prometheus


def _child_counts(n: int) -> None:
    registry = CollectorRegistry()
    Counter("conveyor_test_things", "Things counted.", ["kind"], registry=registry).labels("a").inc(
        n
    )
    Histogram("conveyor_test_seconds", "Durations.", registry=registry).observe(0.2)


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for metric in registry.collect()
        for s in metric.samples
    }


def test_dead_processes_counts_survive_in_one_archive_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prometheus, "_directory", None)
    directory = tmp_path / "metrics"
    prometheus.enable_multiprocess(directory)
    try:
        scrape = prometheus.scrape_registry(CollectorRegistry())
        context = multiprocessing.get_context("fork")
        for n in range(1, 6):  # five children that count and die
            child = context.Process(target=_child_counts, args=(n,))
            child.start()
            child.join(10)
            assert child.exitcode == 0
        assert len(list(directory.glob("counter_*.db"))) == 5
        samples = _samples(scrape)
        assert samples["conveyor_test_things_total[('kind', 'a')]"] == 15
        assert samples["conveyor_test_seconds_count[]"] == 5
        files = sorted(p.name for p in directory.glob("*.db"))
        assert files == ["counter_archive.db", "histogram_archive.db"], files
        child = context.Process(target=_child_counts, args=(10,))
        child.start()
        child.join(10)
        samples = _samples(scrape)
        assert samples["conveyor_test_things_total[('kind', 'a')]"] == 25, "archive + a new one"
        assert len(list(directory.glob("*.db"))) == 2
    finally:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        from prometheus_client import values

        values.ValueClass = values.MutexValue
