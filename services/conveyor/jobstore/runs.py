"""What a run of a job gets from the store: the verdict on starting it, and the fence every
write of the run carries (refused once it is no longer the job's current attempt).
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from conveyor.jobstore.model import JobState
from conveyor.jobstore.workflow_model import WorkflowEnd


class StartVerdict(StrEnum):
    """What a delivery should do (start.lua)."""

    RUN = "run"
    SKIP = "skip"  # cancelled, finished, expired, or a stale copy: ack without running
    POISON = "poison"  # its workers died under it too often: dead-letter it


@dataclass(frozen=True)
class StartResult:
    """The verdict, with the record's state before, its attempts and deaths; for a workflow
    step, what it takes from its parents (None: nothing), and the workflow a skip ended.
    """

    verdict: StartVerdict
    previous_state: JobState | None
    attempts: int
    deaths: int
    inputs: "StepInputs | None" = None
    released_at: float | None = None  # when its workflow queued it (Redis time)
    workflow_ended: WorkflowEnd | None = None


@dataclass(frozen=True)
class StepInputs:
    """The arguments a workflow step takes from its parents' results, or the parent whose
    result is gone (expired or purged) when it cannot have them.
    """

    values: dict[str, Any]
    missing_parent: str | None = None
    size: int = 0  # bytes of the results' JSON


@dataclass(frozen=True)
class Fence:
    """What a write from a run must match in the record to apply: its attempt's token
    (`fence`, the attempt number start.lua gave it) or, from the worker's main process, the
    process that runs it (`owner`).
    """

    field: str
    value: str

    @classmethod
    def attempt(cls, attempt: int) -> "Fence":
        """The fence of the run that started as `attempt`."""
        return cls("fence", str(attempt))

    @classmethod
    def owner(cls, owner: str) -> "Fence":
        """The fence of whatever run the process `owner` ('<host>:<pid>') is running."""
        return cls("owner", owner)


@dataclass(frozen=True)
class Lease:
    """One delivery a worker holds, to renew (renew.lua): kombu's delivery tag ('' for none),
    the queue whose running set holds the job ('' to leave it alone), the job's id, and
    whether the delivery is still in its start grace (renewed even before its run started;
    after it, only once the record shows that this delivery's run started).
    """

    tag: str
    queue: str
    job_id: str
    in_grace: bool


@dataclass(frozen=True)
class Renewal:
    """What a renewal did: how many deliveries' leases it renewed, and the jobs of the
    deliveries past their start grace whose run never started (their leases now lapse).
    """

    renewed: int
    lapsed: tuple[str, ...] = ()
