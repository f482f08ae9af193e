"""Baseline (0): an empty FastAPI endpoint with the same body model and no Redis, the
framework's own cost per request (issue 22's table: 0.13 CPU-ms, against which its 0.35 target
for Conveyor was set). Run: uvicorn bench.baselines.empty:app
"""

import uuid

from fastapi import FastAPI

from bench.baselines.body import Submission

app = FastAPI()


@app.post("/v1/jobs", status_code=202)
async def submit(body: Submission) -> dict[str, str]:
    """Answer with a new id, as if the job were queued."""
    return {"id": str(uuid.uuid4())}
