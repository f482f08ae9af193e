"""Bootstep that renews the lease of every delivery this worker holds.

kombu's Redis transport redelivers a message whose entry in `unacked_index` is older than
the visibility timeout. Refreshing that score while the job runs lets the timeout be short
(a dead worker's jobs come back within a minute) without ever redelivering a live job,
however long it runs (celery/celery#5935, #3802).
"""

import logging
import threading
import time
from typing import Any, ClassVar

import redis
from celery import bootsteps
from celery.worker import state
from kombu.transport.redis import Channel

log = logging.getLogger(__name__)


class LeaseRenewer(bootsteps.StartStopStep):
    """Every `interval` seconds, ZADD XX the current time for each reserved delivery."""

    client: ClassVar["redis.Redis"]
    interval: ClassVar[float]

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        """Start renewing with the worker."""
        self._thread = threading.Thread(target=self._loop, name="conveyor-leases", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        """Stop renewing with the worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def renew(self) -> int:
        """Renew every reserved delivery's lease now; returns how many were renewed."""
        tags = [
            tag
            for request in list(state.reserved_requests)
            if (tag := request.message.delivery_tag) is not None
        ]
        if not tags:
            return 0
        # XX: only refresh deliveries still unacked, never resurrect an acked one.
        self.client.zadd(Channel.unacked_index_key, dict.fromkeys(tags, time.time()), xx=True)
        return len(tags)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew()
            except Exception:
                # A broker blip must not kill the worker; the next round renews again.
                log.exception("could not renew delivery leases")
