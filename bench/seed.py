"""Fast bench data: Conveyor jobs accepted through the real accept script, pipelined."""

from conveyor.core.catalog import load_catalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore._calls import accept_calls
from conveyor.jobstore.results import Limits
from conveyor.jobstore.scripts import ACCEPT
from conveyor.jobstore.store import JobStore
from conveyor.jobstore.submission import Submission, prepare

BATCH = 1000


def accept_jobs(
    store: JobStore,
    count: int,
    queue: Queue,
    task: str = "demo.echo",
    args: dict | None = None,
    tenants: list[str] | None = None,
    limits: Limits | None = None,
) -> list[bytes]:
    """Accept `count` jobs (record, indexes, message), round robin over `tenants` (one,
    "bench", by default), and return their messages."""
    tenants = tenants or ["bench"]
    catalog, settings = load_catalog([]), Settings()
    spec = catalog[task]
    messages: list[bytes] = []
    store.client.script_load(ACCEPT.source)  # pipelined EVALSHAs cannot load it themselves
    for start in range(0, count, BATCH):
        jobs = []
        for n in range(start, min(start + BATCH, count)):
            tenant = tenants[n % len(tenants)]
            submission = Submission.of(spec, tenant=tenant, args=args or {"payload": 1},
                                       priority=queue, max_retries=0)  # fmt: skip
            job, message = prepare(spec, submission, settings.worker)
            messages.append(message)
            jobs.append((job, message, limits or Limits()))
        with store.client.pipeline(transaction=False) as pipe:
            for argv, _ in accept_calls("conveyor", jobs):
                pipe.evalsha(ACCEPT.sha, 0, *argv)
            pipe.execute()
    return messages
