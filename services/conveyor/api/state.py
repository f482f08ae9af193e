"""`ApiState`: what one API process keeps for its lifetime (built with the app; Redis
connects in its lifespan), and how a request reaches it. Routes read the process's objects
only through it (no ad hoc `app.state` reads). Imports no other API module.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from redis.asyncio import Redis as AsyncRedis

from conveyor.core.apikeys import KeyRing, TenantLimits
from conveyor.core.catalog import TaskCatalog
from conveyor.core.settings import Settings
from conveyor.jobstore.aio import AsyncJobStore
from conveyor.jobstore.schedule_store import AsyncScheduleStore
from conveyor.telemetry.metrics import ApiMetrics

if TYPE_CHECKING:
    from conveyor.api.auth import KeySource


@dataclass
class OpenStreams:
    """The event streams this process serves: in all, and per tenant (so that one tenant
    holding streams cannot lock the others out).
    """

    total: int = 0
    by_tenant: Counter[str] = field(default_factory=Counter)

    def opened(self, tenant: str) -> None:
        """Count a stream of `tenant` that starts."""
        self.total += 1
        self.by_tenant[tenant] += 1

    def closed(self, tenant: str) -> None:
        """Count a stream of `tenant` that ended."""
        self.total -= 1
        self.by_tenant[tenant] -= 1
        if self.by_tenant[tenant] <= 0:
            del self.by_tenant[tenant]  # bounded by the tenants streaming now


@dataclass
class TenantLimitsCache:
    """Each tenant's limits as built from one key ring (`auth.limits_for`)."""

    ring: KeyRing | None = None
    by_tenant: dict[str, TenantLimits] = field(default_factory=dict)


@dataclass
class ApiState:
    """Shared objects of one API process."""

    settings: Settings
    catalog: TaskCatalog
    metrics: ApiMetrics
    keys: "KeySource"
    redis: AsyncRedis = field(init=False)
    store: AsyncJobStore = field(init=False)
    schedules: AsyncScheduleStore = field(init=False)
    streams: AsyncRedis = field(init=False)  # blocking reads of job events, own connections
    open_streams: OpenStreams = field(default_factory=OpenStreams)
    tenant_limits: TenantLimitsCache = field(default_factory=TenantLimitsCache)
    traced: bool = False  # a tracer provider exports this process's spans (OTLP endpoint set)

    def connect(self, client: AsyncRedis, streams: AsyncRedis) -> None:
        """Attach the Redis clients (in the app's lifespan)."""
        self.redis = client
        self.streams = streams
        self.store = AsyncJobStore(client, self.settings)
        self.schedules = AsyncScheduleStore(client, self.store.keys)


def state_of(request: Request) -> ApiState:
    """The process's ApiState, from a request."""
    state: ApiState = request.app.state.conveyor
    return state


async def api_state(request: Request) -> ApiState:
    """FastAPI dependency: the process's ApiState (async: a sync dependency would cost a
    thread-pool hop on every request).
    """
    return state_of(request)
