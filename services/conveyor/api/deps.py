"""The dependencies routes declare: the process's state, the JSON body check, the problem
responses every route documents, and looking a job up for its caller.
"""

import re
from typing import Annotated, Any

from fastapi import Depends

from conveyor.api.limits import require_json
from conveyor.api.problems import Problem, ProblemError
from conveyor.api.state import ApiState, api_state
from conveyor.core.apikeys import Principal, Scope
from conveyor.jobstore.model import Job

__all__ = ["JSON_BODY", "PROBLEM_RESPONSES", "ApiState", "State", "existing_job"]


State = Annotated[ApiState, Depends(api_state)]

# A body of another content type than JSON is a 415 (a route dependency, before anything).
JSON_BODY = Depends(require_json)

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 431, 503)
}


_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def existing_job(state: ApiState, job_id: str, principal: Principal) -> Job:
    """The job, or a 404 problem: also for another tenant's job, so that ids of other
    tenants' jobs cannot even be confirmed to exist. Admins read every tenant's jobs.
    """
    # The tenant is checked inside Redis: another tenant's job is answered exactly as an
    # unknown id is, in what it says and in how long it takes.
    tenant = None if principal.can(Scope.ADMIN) else principal.tenant
    job = await state.store.get(job_id, tenant) if _JOB_ID.match(job_id) else None
    if job is None:
        raise ProblemError(404, "Job not found", f"No job {job_id!r}.", slug="job-not-found")
    return job
