"""prometheus-client plumbing: multiprocess mode for prefork and gunicorn, and serving.

Workers (prefork) and the API (gunicorn) record metrics in several processes; the process
that serves `/metrics` aggregates them from a directory of memory-mapped files. The directory
is wiped when the service starts, and files of processes that died are marked dead at each
scrape, so a killed child's `livesum` gauges disappear instead of lingering.
"""

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by enable_multiprocess; inherited by forked children (prefork, gunicorn workers).
_directory: Path | None = None


def enable_multiprocess(directory: Path) -> None:
    """Switch this process (and the children it forks) to multiprocess metrics in `directory`.

    Call it before any metric object is built. prometheus-client reads the directory from the
    environment, so it is written there: this is the one place Conveyor sets a variable.
    """
    global _directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[_ENV] = str(directory)
    _directory = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def multiprocess_directory() -> Path | None:
    """The directory in use, or None in single-process mode."""
    return _directory


class _PruningCollector(Collector):
    """MultiProcessCollector that first retires the files of processes no longer alive."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.inner = multiprocess.MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for path in self.directory.glob("gauge_live*_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
        metrics: Iterable[Metric] = self.inner.collect()  # type: ignore[no-untyped-call]
        return metrics


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scrape_registry(local: CollectorRegistry) -> CollectorRegistry:
    """What `/metrics` serves: the multiprocess aggregate when enabled, else `local`."""
    directory = multiprocess_directory()
    if directory is None:
        return local
    registry = CollectorRegistry()
    registry.register(_PruningCollector(directory))
    return registry


def serve(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve `/metrics` from a background thread (port 0: not at all)."""
    if port:
        start_http_server(port, addr=host, registry=registry)


def mark_dead(pid: int) -> None:
    """Retire a process's live gauges (gunicorn's child_exit, Celery's process shutdown)."""
    directory = multiprocess_directory()
    if directory is not None:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
