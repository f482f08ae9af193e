"""`WorkerHealth`: what a worker's probes read — the consumer's last beat and whether a
shutdown is draining — and how old a beat may be. `/livez` and `/readyz` are its routes on the
worker's own HTTP server; `liveness.LivenessBeat` feeds it.
"""

import threading
import time
from typing import Any

from conveyor.telemetry.prometheus import Response, Route

TEXT = "text/plain; charset=utf-8"


def judge(age: float, max_age_seconds: float) -> tuple[bool, str]:
    """Whether a beat `age` seconds old is fresh, with a one-line reason."""
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
        return judge(time.monotonic() - self._last_beat, self.max_age_seconds)

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
