"""A plain Celery app with the same settings as Conveyor's workers (acks-late, prefetch 1,
JSON, no result backend), for the baselines: the tutorial APIs publish through it and the bare
worker consumes with it. The broker comes from BENCH_BROKER_URL (set by the bench harness).
"""

import os

from celery import Celery
from kombu import Queue

app = Celery("baseline", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6399/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 60, "priority_steps": [0]},
    task_queues=[Queue(q, routing_key=q) for q in ("high", "default", "low")],
    task_default_queue="default",
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)


@app.task(name="demo.echo")
def echo(payload: object = None) -> dict[str, object]:
    """The same no-op as Conveyor's demo.echo."""
    return {"payload": payload}
