"""Baseline (a): the tutorial style. An `async def` endpoint calls `send_task`, whose kombu
publish blocks the event loop. Run: uvicorn bench.baselines.tutorial_async:app
"""

from fastapi import FastAPI

from bench.baselines.body import Submission
from bench.baselines.celery_app import app as celery_app

app = FastAPI()


@app.post("/v1/jobs", status_code=202)
async def submit(body: Submission) -> dict[str, str]:
    """Publish the task and answer with its id."""
    result = celery_app.send_task(body.task, kwargs=body.args, queue="default")
    return {"id": result.id}
