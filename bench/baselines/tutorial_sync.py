"""Baseline (b): the tutorial with a sync `def` endpoint (run in Starlette's thread pool).
Run: uvicorn bench.baselines.tutorial_sync:app
"""

from fastapi import FastAPI

from bench.baselines.body import Submission
from bench.baselines.celery_app import app as celery_app

app = FastAPI()


@app.post("/v1/jobs", status_code=202)
def submit(body: Submission) -> dict[str, str]:
    """Publish the task and answer with its id."""
    result = celery_app.send_task(body.task, kwargs=body.args, queue="default")
    return {"id": result.id}
