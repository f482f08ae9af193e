"""prometheus-client plumbing: multiprocess mode for prefork and gunicorn, and serving.

Workers (prefork) and the API (gunicorn) record metrics in several processes; the process
that serves `/metrics` aggregates them from a directory of memory-mapped files. The directory
is wiped when the service starts, and files of processes that died are marked dead at each
scrape, so a killed child's `livesum` gauges disappear instead of lingering.
"""

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, mmap_dict, multiprocess, values
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# A route answers (status, content type, body) for the part of the path after its prefix.
Response = tuple[int, str, bytes]
Route = Callable[[str], Response]

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


# The file types whose values add up across processes: a dead process's are folded into one
# archive file per type (`<type>_archive.db`), so its counts survive it and the directory does
# not grow with every process that ever lived (a killed child, a replaced gunicorn worker).
_ACCUMULATING = ("counter", "histogram", "summary")


class _PruningCollector(Collector):
    """MultiProcessCollector that first retires the files of processes no longer alive: live
    gauges are dropped, counts folded into the archive.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.inner = multiprocess.MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for path in self.directory.glob("gauge_live*_*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
        for kind in _ACCUMULATING:
            for path in self.directory.glob(f"{kind}_*.db"):
                owner = path.stem.rsplit("_", 1)[1]
                if owner.isdigit() and not _alive(int(owner)):
                    _fold(path, self.directory / f"{kind}_archive.db")
        metrics: Iterable[Metric] = self.inner.collect()  # type: ignore[no-untyped-call]
        return metrics


def _fold(dead: Path, archive: Path) -> None:
    """Add a dead process's values to the archive file of its type, then remove its file."""
    store = mmap_dict.MmapedDict(str(archive))  # type: ignore[no-untyped-call]
    try:
        for key, value, timestamp, _ in mmap_dict.MmapedDict.read_all_values_from_file(str(dead)):  # type: ignore[no-untyped-call]
            total, _ = store.read_value(key)  # type: ignore[no-untyped-call]
            store.write_value(key, total + value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        store.close()  # type: ignore[no-untyped-call]
    dead.unlink(missing_ok=True)


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


class _QuietHandler(WSGIRequestHandler):
    """No access log line per probe or scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(
    port: int,
    registry: CollectorRegistry,
    host: str = "0.0.0.0",  # noqa: S104 - a pod's own port, scraped from outside
    routes: Mapping[str, Route] | None = None,
) -> ThreadingWSGIServer | None:
    """Serve `/metrics`, and `routes` by path prefix (probes, the scaling signal), from a
    background thread; port 0: not at all. Returns the server (its port when 0 was asked of
    the OS is `server.server_port`).
    """
    if not port:
        return None
    metrics_app = make_wsgi_app(registry)
    table = dict(routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        for prefix, route in table.items():
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                try:
                    status, content_type, body = route(path.removeprefix(prefix))
                except Exception:  # noqa: BLE001 - a failing route answers 500, never kills the server
                    status, content_type, body = 500, "text/plain", b"internal error\n"
                phrase = HTTPStatus(status).phrase
                headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
                start_response(f"{status} {phrase}", headers)
                return [body]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="conveyor-http", daemon=True).start()
    return server


def mark_dead(pid: int) -> None:
    """Retire a process's live gauges (gunicorn's child_exit, Celery's process shutdown)."""
    directory = multiprocess_directory()
    if directory is not None:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
