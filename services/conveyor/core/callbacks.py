"""Completion callbacks: a signed `webhook.deliver` of the job resource on a terminal state."""

from conveyor.core.catalog import TaskCatalog, TaskSpec
from conveyor.jobstore.keys import callback_idempotency_key
from conveyor.jobstore.model import Job
from conveyor.jobstore.submission import Submission

CALLBACK_TASK = "webhook.deliver"


def callback_submission(job: Job, catalog: TaskCatalog) -> tuple[TaskSpec, Submission] | None:
    """The callback job for `job` (its task and submission), or None when it has no
    callback_url (or webhooks are disabled).

    The idempotency key makes the callback enqueue once even if two parties (say, the API
    cancelling and a worker finishing) both reach this point.
    """
    if not job.callback_url or CALLBACK_TASK not in catalog:  # no callbacks: webhooks off
        return None
    spec = catalog[CALLBACK_TASK]
    submission = Submission.of(
        spec,
        tenant=job.tenant,
        args={"url": job.callback_url, "payload": job.model_dump(mode="json")},
        idempotency_key=callback_idempotency_key(job.id),
    )
    return spec, submission
