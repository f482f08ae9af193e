"""Names of the Redis keys Conveyor owns (the Lua scripts build the same names)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (`CONVEYOR_KEY_PREFIX`)."""

    prefix: str

    def job(self, job_id: str) -> str:
        """Hash holding one job record."""
        return f"{self.prefix}:job:{job_id}"

    def idempotency(self, tenant: str, key: str) -> str:
        """String mapping a tenant's idempotency key to the job id and request hash."""
        return f"{self.prefix}:idem:{tenant}:{key}"

    def events(self, job_id: str) -> str:
        """Stream of a job's state and progress changes (ids are the SSE event ids)."""
        return f"{self.prefix}:events:{job_id}"

    def index_tenant(self, tenant: str) -> str:
        """Jobs of one tenant."""
        return f"{self.prefix}:index:tenant:{tenant}"

    def rate_limit(self, tenant: str) -> str:
        """Hash holding a tenant's token bucket."""
        return f"{self.prefix}:ratelimit:{tenant}"

    @property
    def index_all(self) -> str:
        """Sorted set of every job id, scored by creation time (ms)."""
        return f"{self.prefix}:index:all"

    def index_state(self, state: str) -> str:
        """Jobs in one state."""
        return f"{self.prefix}:index:state:{state}"

    def index_task(self, task: str) -> str:
        """Jobs of one task."""
        return f"{self.prefix}:index:task:{task}"

    def index_queue(self, queue: str) -> str:
        """Jobs of one queue."""
        return f"{self.prefix}:index:queue:{queue}"

    @property
    def delayed(self) -> str:
        """Sorted set of job ids waiting for their due time (ms)."""
        return f"{self.prefix}:delayed"

    @property
    def delayed_messages(self) -> str:
        """Hash of job id to the Celery message to push when due."""
        return f"{self.prefix}:delayed:messages"

    def inflight(self, consumer: str, queue: str) -> str:
        """List of messages a consumer has taken from `queue` but not yet recorded."""
        return f"{self.prefix}:inflight:{consumer}:{queue}"

    def running(self, queue: str) -> str:
        """Sorted set of a queue's running job ids (scored by start, Redis time in seconds):
        kept by the job scripts, read in O(1) as part of the tier's demand.
        """
        return f"{self.prefix}:running:{queue}"

    def consumers(self, queue: str) -> str:
        """Sorted set of a queue's consumers, scored by their last heartbeat (seconds)."""
        return f"{self.prefix}:consumers:{queue}"

    @property
    def dead(self) -> str:
        """Sorted set of dead-lettered job ids, scored by when they died (ms)."""
        return f"{self.prefix}:dead"

    @property
    def dead_messages(self) -> str:
        """Hash of dead-lettered job id to the message that replays it."""
        return f"{self.prefix}:dead:messages"
