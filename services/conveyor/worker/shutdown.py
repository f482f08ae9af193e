"""Bootstep that bounds a warm shutdown.

On SIGTERM Celery stops fetching and waits for running jobs, without limit; Kubernetes then
SIGKILLs the pod and those jobs wait a visibility timeout to come back. Here, jobs get
`shutdown_timeout_seconds` to finish; the rest are marked queued again and cancelled, and
their unacked messages go back to the queue at once when the consumer closes its channel.
A job that finished in time was acked and is never re-run.
"""

import logging
import threading
from typing import Any

from celery import bootsteps
from celery.signals import worker_shutting_down
from celery.worker import state

from conveyor.jobstore.runs import Fence
from conveyor.worker.lifecycle import process_owner
from conveyor.worker.services import services_of

log = logging.getLogger(__name__)


class ShutdownDeadline(bootsteps.StartStopStep):
    """Hands unfinished jobs back `timeout` seconds after a warm shutdown begins."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        services = services_of(parent.app)
        self.store = services.store
        self.health = services.health
        self.timeout = services.settings.worker.shutdown_timeout_seconds
        self.worker = parent
        self._started = threading.Event()

    def start(self, parent: Any) -> None:
        """Arm the deadline for this worker's shutdown signal."""
        worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def stop(self, parent: Any) -> None:
        """Disarm."""
        worker_shutting_down.disconnect(self._on_shutting_down)

    def _on_shutting_down(self, sender: Any = None, how: str = "", **kwargs: Any) -> None:
        # Runs inside the signal handler: only start a thread here.
        if sender != self.worker.hostname or self._started.is_set():
            return
        self._started.set()
        self.health.draining()
        threading.Thread(target=self._enforce, name="conveyor-shutdown", daemon=True).start()

    def _enforce(self) -> None:
        deadline_passed = self._wait_for_idle()
        if not deadline_passed:
            return
        try:
            self.hand_back()
        except Exception:
            log.exception("could not hand unfinished jobs back at shutdown")

    def _wait_for_idle(self) -> bool:
        waited, step = 0.0, 0.1
        while waited < self.timeout:
            if not self._unfinished():
                return False
            threading.Event().wait(step)
            waited += step
        return bool(self._unfinished())

    @staticmethod
    def _unfinished() -> list[Any]:
        return [r for r in list(state.active_requests) if r.id not in state.successful_requests]

    def hand_back(self) -> None:
        """Mark unfinished jobs queued and cancel them; their messages are requeued on close."""
        requests = self._unfinished()
        for request in requests:
            # Fenced by the child running it: a job another worker took over stays its.
            owner = process_owner(getattr(request, "worker_pid", None) or 0)
            self.store.hand_back(request.id, Fence.owner(owner))
        log.warning(
            "shutdown timeout (%.0fs) reached: handing %d running job(s) back to the queue",
            self.timeout,
            len(requests),
        )
        self.worker.consumer.cancel_active_requests()
