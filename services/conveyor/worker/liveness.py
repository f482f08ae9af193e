"""Liveness: a heartbeat file touched from the consumer's event loop, and its check.

The file is touched by a timer of the consumer, so it goes stale when the event loop is
stuck or the consumer is down (reconnecting, or wedged on a dead connection).
`conveyor worker --check` exits non-zero once it is older than `heartbeat_max_age_seconds`,
and Kubernetes restarts the container. `celery inspect ping` is not used: it broadcasts
through the broker and tells nothing about this process.
"""

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

from celery import bootsteps

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
    if age > max_age_seconds:
        return False, f"heartbeat is {age:.0f}s old (limit {max_age_seconds:.0f}s)"
    return True, f"heartbeat is {age:.1f}s old"


class Heartbeat(bootsteps.StartStopStep):
    """Consumer step: touches the heartbeat file every `interval` seconds while consuming."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    base_path: ClassVar[Path]
    interval: ClassVar[float]

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None
        self.path = self.base_path

    def start(self, parent: Any) -> None:
        """Beat now and on every tick of the consumer's timer."""
        queues = sorted(parent.app.amqp.queues.consume_from or parent.app.amqp.queues)
        self.path = heartbeat_path(self.base_path, "-".join(queues))
        self.beat()
        self._timer = parent.timer.call_repeatedly(self.interval, self.beat)

    def stop(self, parent: Any) -> None:
        """Stop beating (the file goes stale unless the consumer starts again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def beat(self) -> None:
        """Touch the file; a failure is logged (and shows as a stale heartbeat)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError:
            log.exception("could not write the heartbeat file %s", self.path)
