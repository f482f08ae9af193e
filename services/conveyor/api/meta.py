"""/v1/tasks (the catalogue) and the health endpoints."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from conveyor.api.auth import Reader
from conveyor.api.deps import State
from conveyor.api.schemas import Health, TaskInfo

READINESS_TIMEOUT_SECONDS = 1.0


def meta_router() -> APIRouter:
    """Catalogue and probes."""
    router = APIRouter()

    @router.get(
        "/v1/tasks",
        response_model=list[TaskInfo],
        tags=["tasks"],
        summary="List tasks",
        operation_id="list_tasks",
    )
    async def list_tasks(state: State, _: Reader) -> list[TaskInfo]:
        """Every task this deployment runs, with its argument schema, queue and retry policy."""
        return [
            TaskInfo(
                name=spec.name,
                queue=spec.queue,
                description=spec.description,
                args_schema=spec.args_model.model_json_schema(),
                retry=spec.retry.describe(),
                timeout_seconds=spec.timeout_seconds,
                max_timeout_seconds=spec.max_timeout_seconds,
            )
            for spec in state.catalog.values()
        ]

    @router.get("/healthz", response_model=Health, tags=["health"], operation_id="healthz")
    async def healthz() -> Health:
        """The process is alive (no dependency is checked)."""
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        operation_id="readyz",
        response_description="Ready: Redis answers",
        responses={
            503: {"model": Health, "description": "Not ready: Redis does not answer in a second"}
        },
    )
    async def readyz(state: State) -> JSONResponse:
        """Redis answers within a second: the API can accept jobs."""
        try:
            await asyncio.wait_for(state.redis.ping(), READINESS_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError):
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return router
