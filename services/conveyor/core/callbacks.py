"""Completion callbacks: a signed `webhook.deliver` of the job resource on a terminal state."""

from conveyor.core.catalog import TaskCatalog
from conveyor.core.jobs import Job
from conveyor.core.submit import Submission

CALLBACK_TASK = "webhook.deliver"


def callback_submission(job: Job, catalog: TaskCatalog) -> Submission | None:
    """The callback job for `job`, or None when it has no callback_url.

    The idempotency key makes the callback enqueue once even if two parties (say, the API
    cancelling and a worker finishing) both reach this point.
    """
    if not job.callback_url:
        return None
    spec = catalog[CALLBACK_TASK]
    return Submission(
        tenant=job.tenant,
        task=spec.name,
        args={"url": job.callback_url, "payload": job.model_dump(mode="json")},
        queue=spec.queue,
        max_retries=spec.retry.max_retries,
        idempotency_key=f"callback:{job.id}",
    )
