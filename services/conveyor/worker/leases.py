"""Bootstep that renews this worker's leases and recovers those of dead consumers.

kombu's Redis transport redelivers a message whose entry in `unacked_index` is older than
the visibility timeout. Refreshing that score while the job runs lets the timeout be short
(a dead worker's jobs come back within a minute) without ever redelivering a live job,
however long it runs (celery/celery#5935, #3802).

The same loop records this consumer's heartbeat in its queues' consumer sets (its in-flight
lists belong to a live consumer; the exporter counts live workers from them) and moves the
in-flight messages of consumers silent for a lease period back to their queues
(see `transport.py`).
"""

import logging
from typing import Any

from celery.signals import worker_shutdown
from celery.worker import state
from kombu.transport.redis import Channel

from conveyor.worker.periodic import PeriodicStep
from conveyor.worker.services import services_of
from conveyor.worker.transport import consumer_id

log = logging.getLogger(__name__)


class LeaseRenewer(PeriodicStep):
    """Four times a lease period: keep alive, renew leases, recover dead consumers."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        services = services_of(parent.app)
        self.store = services.store
        self.lease_seconds = float(services.settings.worker.visibility_timeout_seconds)
        self.interval = self.lease_seconds / 4
        self.worker = parent
        self.queues: list[str] = []

    def start(self, parent: Any) -> None:
        """Declare this consumer alive, then start the loop (before the consumer starts)."""
        amqp = parent.app.amqp
        self.queues = sorted(amqp.queues.consume_from or amqp.queues)
        self.keep_alive()
        worker_shutdown.connect(self._after_pool_drained, weak=False)
        super().start(parent)

    def stop(self, parent: Any) -> None:
        """Keep the loop running: leases of the jobs still draining must be renewed.

        Celery stops this step before the pool has finished its jobs, from the main thread,
        which must go on to read the jobs' results: blocking here until they end would
        deadlock the drain (every shutdown then waited out its whole timeout). The loop
        stops on `worker_shutdown`, sent once the pool has drained.
        """

    def _after_pool_drained(self, sender: Any = None, **_: Any) -> None:
        """Stop renewing, retire this consumer and hand back anything left in flight."""
        if sender is not self.worker:
            return
        worker_shutdown.disconnect(self._after_pool_drained)
        super().stop(self.worker)
        try:
            self.store.retire(consumer_id(), self.queues)
            self.store.recover_inflight(self.lease_seconds)
        except Exception:
            log.exception("could not hand back in-flight messages at shutdown")

    def tick(self) -> None:
        """Keep alive, renew, recover."""
        self.keep_alive()
        self.renew()
        recovered = self.store.recover_inflight(self.lease_seconds)
        if recovered:
            log.warning("requeued %d in-flight message(s) of dead consumers", recovered)

    def keep_alive(self) -> None:
        """Record this consumer's heartbeat (it is dead to others one lease period later)."""
        self.store.heartbeat(consumer_id(), self.queues)

    def renew(self) -> int:
        """Renew every reserved delivery's lease now; returns how many were renewed."""
        requests = list(state.reserved_requests)
        tags = [tag for request in requests if (tag := request.message.delivery_tag) is not None]
        running = [
            (queue, request.id)
            for request in requests
            if (queue := request.delivery_info.get("routing_key")) in self.queues
        ]
        # At Redis' clock, as leases are judged: a skewed worker neither keeps a dead lease
        # alive nor lets a live one lapse.
        return self.store.renew_leases(Channel.unacked_index_key, tags, running)
