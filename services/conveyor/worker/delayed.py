"""Bootstep that moves due delayed jobs (delay_seconds, retry backoff) onto their queues.

Delayed jobs wait in a Redis sorted set rather than as ETA messages in a worker's memory, so
the visibility timeout never redelivers them and a restart loses none. Every worker runs this
loop; the move is one atomic script, so concurrent promoters never duplicate a message.
"""

import logging
import threading
import time
from typing import Any, ClassVar

from celery import bootsteps

from conveyor.core.store import JobStore

log = logging.getLogger(__name__)


class DelayedJobsPromoter(bootsteps.StartStopStep):
    """Runs `JobStore.promote_due` every `interval` seconds in a daemon thread."""

    store: ClassVar[JobStore]
    interval: ClassVar[float]

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        """Start the loop with the worker."""
        self._thread = threading.Thread(target=self._loop, name="conveyor-delayed", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        """Stop the loop with the worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.store.promote_due(time.time())
                if moved:
                    log.debug("promoted %d delayed jobs", moved)
            except Exception:
                # A broker blip must not kill the worker: log and try again next tick.
                log.exception("could not promote delayed jobs")
            self._stop.wait(self.interval)
