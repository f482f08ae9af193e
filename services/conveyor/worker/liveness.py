"""Liveness and readiness of a worker: a heartbeat from the consumer's event loop.

The consumer's timer beats every `interval` seconds, so the heartbeat goes stale when the
event loop is stuck or the consumer is down (reconnecting, or wedged on a dead connection).
Kubernetes probes read it over HTTP from the worker's own metrics port (`/livez`, `/readyz`:
no process is started per probe); `conveyor worker --check` reads the heartbeat file the same
beat touches, for hosts without HTTP probes. `celery inspect ping` is not used: it broadcasts
through the broker and tells nothing about this process.

While a warm shutdown drains running jobs the consumer no longer beats; the worker then stays
live (it is doing what it was told) and stops being ready. The state the probes read is
`health.WorkerHealth`.
"""

import logging
import time
from pathlib import Path
from typing import Any

from celery import bootsteps

from conveyor.worker.health import judge
from conveyor.worker.services import services_of

log = logging.getLogger(__name__)


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
    return judge(age, max_age_seconds)


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
