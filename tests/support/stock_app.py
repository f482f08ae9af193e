"""A stock Celery app, written as any Celery user would, knowing nothing of Conveyor but its
transport: the tiers' lists hold ready tokens and the messages wait per tenant (fair share),
so a Celery worker consumes them through Conveyor's transport (one setting).
"""

import json

import redis
from celery import Celery

app = Celery("stock")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_ignore_result=True,
    broker_transport="conveyor.worker.transport:ReliableTransport",
)


@app.task(name="demo.echo", bind=True)
def echo(self, payload=None):  # type: ignore[no-untyped-def]
    """Record what was received where the test can see it."""
    client = redis.Redis.from_url(self.app.conf.broker_url)
    client.set(
        f"stock:{self.request.id}",
        json.dumps({"payload": payload, "retries": self.request.retries}),
    )
