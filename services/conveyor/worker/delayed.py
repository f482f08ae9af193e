"""Bootstep that moves due delayed jobs (delay_seconds, retry backoff) onto their queues.

Delayed jobs wait in a Redis sorted set rather than as ETA messages in a worker's memory, so
the visibility timeout never redelivers them and a restart loses none. Every worker runs this
loop; the move is one atomic script, so concurrent promoters never duplicate a message.
"""

import logging
from typing import Any

from conveyor.worker.periodic import PeriodicStep
from conveyor.worker.services import services_of

log = logging.getLogger(__name__)


class DelayedJobsPromoter(PeriodicStep):
    """Runs `JobStore.promote_due` every `WORKER__DELAYED_POLL_SECONDS`."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        services = services_of(parent.app)
        self.store = services.store
        self.interval = services.settings.worker.delayed_poll_seconds

    def tick(self) -> None:
        """Promote what is due."""
        moved = self.store.promote_due()
        if moved:
            log.debug("promoted %d delayed jobs", moved)
