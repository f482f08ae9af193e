"""A worker bootstep that runs `tick()` every `interval` seconds in a daemon thread."""

import logging
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


class PeriodicStep(bootsteps.StartStopStep):
    """Subclasses set `interval` and implement `tick`; a failing tick is logged, never fatal."""

    interval: float

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """One round of work."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        """Start the loop with the worker."""
        name = f"conveyor-{type(self).__name__}"
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        """Stop the loop with the worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:
                # A broker blip must not kill the worker: log, and try again next round.
                log.exception("%s failed; retrying next round", type(self).__name__)
