"""What the API keeps for its lifetime, created in the lifespan and read by the routes."""

from dataclasses import dataclass

import redis.asyncio
from fastapi import Request
from redis.asyncio import Redis as AsyncRedis

from conveyor.core.catalog import TaskCatalog
from conveyor.core.settings import Settings
from conveyor.jobstore.aio import AsyncJobStore


@dataclass
class ApiState:
    """Shared objects of one API process."""

    settings: Settings
    catalog: TaskCatalog
    redis: "redis.asyncio.Redis"
    store: AsyncJobStore
    streams: AsyncRedis  # blocking reads of job events, on connections of their own
    open_streams: int = 0


async def api_state(request: Request) -> ApiState:
    """FastAPI dependency: the process's ApiState (async: a sync dependency would cost a
    thread-pool hop on every request).
    """
    state: ApiState = request.app.state.conveyor
    return state
