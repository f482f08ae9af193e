"""Fast bench data: Conveyor jobs accepted through the real accept script, pipelined."""

from conveyor.core.catalog import load_catalog
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.core.store import ACCEPT, JobStore, Limits, accept_args
from conveyor.core.submit import Submission, prepare

BATCH = 1000


def accept_jobs(
    store: JobStore, count: int, queue: Queue, task: str = "demo.echo", args: dict | None = None
) -> list[bytes]:
    """Accept `count` jobs (record, indexes, message) and return their messages."""
    catalog, settings = load_catalog([]), Settings()
    spec = catalog[task]
    messages: list[bytes] = []
    store.client.script_load(ACCEPT.source)  # pipelined EVALSHAs cannot load it themselves
    for start in range(0, count, BATCH):
        with store.client.pipeline(transaction=False) as pipe:
            for _ in range(min(BATCH, count - start)):
                submission = Submission(tenant="bench", task=task, args=args or {"payload": 1},
                                        queue=queue, max_retries=0)  # fmt: skip
                job, message = prepare(spec, submission, settings)
                messages.append(message)
                pipe.evalsha(ACCEPT.sha, 0, *accept_args("conveyor", job, message, 3600, Limits()))
            pipe.execute()
    return messages
