"""The Python client of the Conveyor API, sync (`Client`) and asyncio (`AsyncClient`).

from conveyor.client import Client

with Client("https://jobs.example.com", api_key="cvk_...") as conveyor:
    job = conveyor.submit("demo.sleep", {"seconds": 3}, priority="high")
    done = conveyor.wait(job.id, timeout=60)
    print(done.state, done.result)
"""

from conveyor.client._base import BatchOutcome, JobEvent, Retrying, WorkflowEvent
from conveyor.client.async_client import AsyncClient
from conveyor.client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConveyorError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from conveyor.client.sync_client import Client
from conveyor.jobstore.listing import ListedJob
from conveyor.jobstore.model import Job, JobState
from conveyor.jobstore.workflow_model import Workflow, WorkflowState, WorkflowStep, WorkflowSummary

__all__ = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "BatchOutcome",
    "Client",
    "Conflict",
    "ConveyorError",
    "Forbidden",
    "Job",
    "JobEvent",
    "JobState",
    "ListedJob",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Retrying",
    "ServerError",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
    "Workflow",
    "WorkflowEvent",
    "WorkflowState",
    "WorkflowStep",
    "WorkflowSummary",
]
