"""/v1/dead-letters: jobs that died too often or ran out of retries, kept for replay."""

import re

from fastapi import APIRouter, Response
from pydantic import BaseModel

from conveyor.api.auth import Admin
from conveyor.api.deps import PROBLEM_RESPONSES, State, existing_job
from conveyor.api.pages import (
    Cursor,
    Limit,
    ListingFields,
    invalid_cursor,
    listing_fields,
    page_response,
)
from conveyor.api.problems import ProblemError
from conveyor.api.schemas import JobPage
from conveyor.jobstore.model import Job
from conveyor.jobstore.results import InvalidCursorError

_JOB_ID = re.compile(r"^[0-9a-f-]{36}$")


class Count(BaseModel):
    """How many dead letters an operation touched."""

    count: int


def dead_letters_router() -> APIRouter:
    """Listing, replay and purge of dead letters (every tenant's: the admin scope only)."""
    router = APIRouter(
        prefix="/v1/dead-letters", tags=["dead letters"], responses=PROBLEM_RESPONSES
    )

    @router.get("", response_model=JobPage, summary="List dead letters")
    async def list_dead_letters(
        state: State,
        _: Admin,
        response: Response,
        limit: Limit = 50,
        cursor: Cursor = None,
        fields: ListingFields = None,
    ) -> Response:
        """Dead-lettered jobs, most recent first (summaries; see `fields`)."""
        try:
            page = await state.store.list_jobs(
                limit=limit,
                cursor=cursor,
                dead_letters=True,
                fields=listing_fields(fields),
                max_bytes=state.settings.api.listing_max_bytes,
            )
        except InvalidCursorError:
            raise invalid_cursor() from None
        return page_response(page, response)

    @router.post("/replay", response_model=Count, summary="Replay every dead letter")
    async def replay_all(state: State, _: Admin) -> Count:
        """Put every dead-lettered job back on its queue as a new attempt."""
        return Count(count=await state.store.replay())

    @router.post("/{job_id}/replay", response_model=Job, summary="Replay one dead letter")
    async def replay_one(job_id: str, state: State, principal: Admin) -> Job:
        """Put one dead-lettered job back on its queue as a new attempt of the same job."""
        await _dead(state, job_id)
        await state.store.replay([job_id])
        return await existing_job(state, job_id, principal)

    @router.delete("", response_model=Count, summary="Purge every dead letter")
    async def purge_all(state: State, _: Admin) -> Count:
        """Drop every dead letter; the jobs stay readable until their retention ends."""
        return Count(count=await state.store.purge())

    @router.delete("/{job_id}", response_model=Count, summary="Purge one dead letter")
    async def purge_one(job_id: str, state: State, _: Admin) -> Count:
        """Drop one dead letter."""
        await _dead(state, job_id)
        return Count(count=await state.store.purge([job_id]))

    return router


async def _dead(state: State, job_id: str) -> None:
    if not _JOB_ID.match(job_id) or await state.redis.zscore(state.store.keys.dead, job_id) is None:
        raise ProblemError(
            404, "Dead letter not found", f"No dead letter {job_id!r}.", slug="job-not-found"
        )
