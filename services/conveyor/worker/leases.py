"""Bootstep that renews this worker's leases and recovers those of dead consumers.

kombu's Redis transport redelivers a message whose entry in `unacked_index` is older than
the visibility timeout. Refreshing that score while the job runs lets the timeout be short
(a dead worker's jobs come back within a minute) without ever redelivering a live job,
however long it runs (celery/celery#5935, #3802).

The same loop records this consumer's heartbeat in its queues' consumer sets (its in-flight
lists belong to a live consumer; the exporter counts live workers from them) and moves the
in-flight messages of consumers silent for a lease period back to their queues
(see `transport.py`).

A delivery is renewed unconditionally only for a start grace after the renewer first sees
it (`WORKER__START_GRACE_LEASES` visibility timeouts); after that, only while the job's
record names it as the delivery whose run started. A prefork child that hangs before it
starts the job (seen once in the Sentinel failover test: a fresh worker's child took a
message and never ran start.lua) no longer keeps the job's lease alive for ever: the lease
lapses, kombu's sweep redelivers the message under a fresh tag, and another child runs it.
"""

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery.signals import worker_shutdown
from celery.worker import state
from kombu.transport.redis import Channel

from conveyor.jobstore.runs import Lease, Renewal
from conveyor.jobstore.store import JobStore
from conveyor.worker.periodic import PeriodicStep
from conveyor.worker.services import services_of
from conveyor.worker.transport import consumer_id

log = logging.getLogger(__name__)


class StartGrace:
    """The worker's side of a lease's start grace: when it first saw each delivery it holds
    (its own monotonic clock: this measures how long it has held a delivery, it judges no
    lease; Redis' clock does that).
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._first_seen: dict[str, float] = {}
        self._reported: set[str] = set()

    def leases(self, requests: Iterable[Any], queues: Iterable[str]) -> list[Lease]:
        """The leases of Celery's reserved `requests` (those of `queues` renew the running
        set too); forgets the deliveries no longer held.
        """
        now, ours, leases = self.clock(), set(queues), []
        held: set[str] = set()
        for request in requests:
            tag = request.message.delivery_tag or ""
            queue = request.delivery_info.get("routing_key") or ""
            first = self._first_seen.setdefault(tag, now) if tag else now
            held.add(tag)
            leases.append(Lease(tag, queue if queue in ours else "", str(request.id),
                                in_grace=now - first < self.seconds))  # fmt: skip
        for tag in set(self._first_seen) - held:
            del self._first_seen[tag]
        self._reported &= held
        return leases

    def report(self, renewal: Renewal, leases: Iterable[Lease]) -> None:
        """Log each delivery left to lapse, once."""
        lapsed = set(renewal.lapsed)
        for lease in leases:
            if lease.job_id in lapsed and lease.tag not in self._reported:
                self._reported.add(lease.tag)
                log.warning(
                    "job %s: delivery %s not started %.0fs after it was received (its pool "
                    "process may be hung); its lease lapses and the message is redelivered",
                    lease.job_id, lease.tag, self.seconds,
                )  # fmt: skip


def renew_reserved(
    store: JobStore, grace: StartGrace, requests: Iterable[Any], queues: Iterable[str]
) -> Renewal:
    """Renew the leases of Celery's reserved `requests` (see the module docstring)."""
    leases = grace.leases(requests, queues)
    # At Redis' clock, as leases are judged: a skewed worker neither keeps a dead lease
    # alive nor lets a live one lapse.
    renewal = store.renew_leases(Channel.unacked_index_key, leases)
    grace.report(renewal, leases)
    return renewal


class LeaseRenewer(PeriodicStep):
    """Four times a lease period: keep alive, renew leases, recover dead consumers."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        services = services_of(parent.app)
        self.store = services.store
        self.lease_seconds = float(services.settings.worker.visibility_timeout_seconds)
        self.interval = self.lease_seconds / 4
        self.grace = StartGrace(services.settings.worker.start_grace_leases * self.lease_seconds)
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
        """Renew the reserved deliveries' leases now; returns how many were renewed."""
        return renew_reserved(self.store, self.grace, list(state.reserved_requests),
                              self.queues).renewed  # fmt: skip
