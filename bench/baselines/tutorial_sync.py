"""Baseline (b): the tutorial with a sync `def` endpoint (run in Starlette's thread pool).
Run: uvicorn bench.baselines.tutorial_sync:app
"""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from bench.baselines.celery_app import app as celery_app

app = FastAPI()


class Submission(BaseModel):
    """The same body Conveyor takes for demo.echo."""

    task: str
    args: dict[str, Any] = {}


@app.post("/v1/jobs", status_code=202)
def submit(body: Submission) -> dict[str, str]:
    """Publish the task and answer with its id."""
    result = celery_app.send_task(body.task, kwargs=body.args, queue="default")
    return {"id": result.id}
