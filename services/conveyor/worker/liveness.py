"""Liveness and readiness of a worker: a heartbeat from the consumer's event loop.

The consumer's timer beats every `interval` seconds, so the heartbeat goes stale when the
event loop is stuck or the consumer is down (reconnecting, or wedged on a dead connection).
Kubernetes probes read it over HTTP from the worker's own metrics port (`/livez`, `/readyz`:
no process is started per probe); `conveyor worker --check` reads the heartbeat file the same
beat touches, for hosts without HTTP probes. `celery inspect ping` is not used: it broadcasts
through the broker and tells nothing about this process.

While a warm shutdown drains running jobs the consumer no longer beats; the worker then stays
live (it is doing what it was told) and stops being ready.
"""

import logging
import threading
import time
from pathlib import Path
from typing import Any

from celery import bootsteps

from conveyor.telemetry.prometheus import Response, Route
from conveyor.worker.services import services_of

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"


def heartbeat_path(base: Path, queue: str) -> Path:
    """The heartbeat file of the worker serving `queue` (several may share a host)."""
    return base.with_name(f"{base.name}-{queue}")


def check(path: Path, max_age_seconds: float, now: float | None = None) -> tuple[bool, str]:
    """Whether the heartbeat at `path` is fresh, with a one-line reason."""
    now = time.time() if now is None else now
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat at {path}"
    return _judge(age, max_age_seconds)


def _judge(age: float, max_age_seconds: float) -> tuple[bool, str]:
    if age > max_age_seconds:
        return False, f"heartbeat is {age:.0f}s old (limit {max_age_seconds:.0f}s)"
    return True, f"heartbeat is {age:.1f}s old"


class WorkerHealth:
    """What the probes read: the last heartbeat and whether a shutdown is draining."""

    def __init__(self, max_age_seconds: float) -> None:
        self.max_age_seconds = max_age_seconds
        # Until the consumer first beats, the process start counts (it may be waiting for
        # Redis); a consumer that never comes up fails liveness after max_age_seconds.
        self._last_beat = time.monotonic()
        self._consuming = False
        self._draining = threading.Event()

    def beat(self) -> None:
        """The consumer loop is alive and consuming."""
        self._last_beat = time.monotonic()
        self._consuming = True

    def draining(self) -> None:
        """A warm shutdown began: no new jobs are fetched, running ones finish."""
        self._draining.set()

    def live(self) -> tuple[bool, str]:
        """Alive: draining, or a fresh heartbeat."""
        if self._draining.is_set():
            return True, "draining running jobs before exit"
        return _judge(time.monotonic() - self._last_beat, self.max_age_seconds)

    def ready(self) -> tuple[bool, str]:
        """Ready: consuming, with a fresh heartbeat, and not shutting down."""
        if self._draining.is_set():
            return False, "shutting down"
        if not self._consuming:
            return False, "consumer not started"
        return self.live()

    def routes(self) -> dict[str, Route]:
        """`/livez` and `/readyz` for the worker's HTTP server."""

        def probe(judge: Any) -> Route:
            def route(_: str) -> Response:
                ok, reason = judge()
                return (200 if ok else 503), TEXT, f"{reason}\n".encode()

            return route

        return {"/livez": probe(self.live), "/readyz": probe(self.ready)}


class LivenessBeat(bootsteps.StartStopStep):
    """Consumer step: beats every `interval` seconds while consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        services = services_of(parent.app)
        self.health = services.health
        self.base_path = services.settings.worker.heartbeat_file
        self.interval = services.settings.worker.heartbeat_interval_seconds
        self._timer: Any = None
        self.path = self.base_path

    def start(self, parent: Any) -> None:
        """Beat now and on every tick of the consumer's timer."""
        queues = sorted(parent.app.amqp.queues.consume_from or parent.app.amqp.queues)
        self.path = heartbeat_path(self.base_path, "-".join(queues))
        self.beat()
        self._timer = parent.timer.call_repeatedly(self.interval, self.beat)

    def stop(self, parent: Any) -> None:
        """Stop beating (the heartbeat goes stale unless the consumer starts again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def beat(self) -> None:
        """Record the beat and touch the file; a file failure is logged (a stale check)."""
        self.health.beat()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError:
            log.exception("could not write the heartbeat file %s", self.path)
