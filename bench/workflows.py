"""Benchmark: workflows (issue 20). How long accepting a 1,000-step workflow takes and in how
many round trips to Redis, and what running a step costs next to running a single job.

1. Accept: POST /v1/workflows of 1,000 steps (a chord: 999 parallel steps and a fan-in, and
   a 1,000-step chain), 5 of each; wall time per request, EVALSHA calls and script µs per
   workflow (`INFO commandstats`).
2. Scheduling overhead: the same number of `demo.echo` runs, once as single jobs and once as
   steps of layered workflows (each step after one step of the layer before: every step but
   the first layer is released by its parent), drained by one worker per run; runs/s, and
   Redis script µs per run from acceptance to the end (accept, claim, start, finish, and for
   a step its release and its workflow's settling and end).

    python -m bench.workflows [--steps 3000]
"""

import argparse
import json
import statistics
import time

import httpx

from bench.harness import BENCH_KEY, PYTHON, Proc, conveyor_env, redis_server, start_conveyor_api
from bench.redis_cost import command_usec, commandstats

HEADERS = {"Authorization": f"Bearer {BENCH_KEY}"}
ECHO = {"task": "demo.echo", "args": {"payload": 1}}


def chord(size: int) -> dict[str, object]:
    parallel = [ECHO] * (size - 1)
    return {"chord": {"parallel": parallel, "then": {"task": "demo.echo",
                                                     "inputs": {"payload": "*"}}}}  # fmt: skip


def chain(size: int) -> dict[str, object]:
    return {"chain": [ECHO] * size}


def layered(width: int, depth: int) -> dict[str, object]:
    """`depth` layers of `width` steps; step i of a layer after step i of the one before."""
    steps = []
    for layer in range(depth):
        for i in range(width):
            step: dict[str, object] = {"name": f"l{layer}-{i}", **ECHO}
            if layer:
                step["depends_on"] = [f"l{layer - 1}-{i}"]
            steps.append(step)
    return {"steps": steps}


def accept_figures(http: httpx.Client, client: object, name: str, body: dict[str, object],
                   runs: int = 5) -> dict[str, object]:  # fmt: skip
    walls = []
    client.config_resetstat()  # type: ignore[attr-defined]
    for n in range(runs):
        started = time.perf_counter()
        response = http.post("/v1/workflows", json=body, headers={"Idempotency-Key": f"{name}-{n}"})
        walls.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
    usec, calls = command_usec(commandstats(client))
    return {"shape": name, "median_ms": round(statistics.median(walls) * 1000, 1),
            "evalsha_per_workflow": round(calls / runs, 2),
            "script_ms_per_workflow": round(usec / runs / 1000, 2)}  # fmt: skip


def drain(server_url: str, client: object, total: int) -> tuple[float, float]:
    """Start a worker, wait for `total` succeeded records; (runs/s, script µs per run, from
    their acceptance on: a single job's accept does what a step's release does).
    """
    worker = Proc("worker", [PYTHON, "-m", "conveyor", "worker", "--queue", "default"],
                  conveyor_env(server_url, CONVEYOR_WORKER__CONCURRENCY="4"))  # fmt: skip
    try:
        while client.zcard("conveyor:index:state:succeeded") == 0:  # type: ignore[attr-defined]
            time.sleep(0.01)
        started = time.perf_counter()
        while client.zcard("conveyor:index:state:succeeded") < total:  # type: ignore[attr-defined]
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        usec, _ = command_usec(commandstats(client))
    finally:
        worker.stop()
    return total / elapsed, usec / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    total = parser.parse_args().steps
    width, depth = 10, 10
    per_workflow = width * depth
    workflows = total // per_workflow
    total = workflows * per_workflow
    with redis_server() as server:
        client = server.client()
        api, base = start_conveyor_api(server.url)
        try:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http:
                accepts = [accept_figures(http, client, "chord-1000", chord(1000)),
                           accept_figures(http, client, "chain-1000", chain(1000))]  # fmt: skip
                client.flushdb()
                client.config_resetstat()
                jobs = {"jobs": [ECHO] * 500}
                for _ in range(total // 500):
                    assert http.post("/v1/jobs/batch", json=jobs).json()["accepted"] == 500
                single_rate, single_us = drain(server.url, client, total)
                client.flushdb()
                client.config_resetstat()
                for n in range(workflows):
                    response = http.post("/v1/workflows", json=layered(width, depth),
                                         headers={"Idempotency-Key": f"layered-{n}"})  # fmt: skip
                    assert response.status_code == 202, response.text
                step_rate, step_us = drain(server.url, client, total)
        finally:
            api.stop()
    for figure in accepts:
        print(json.dumps({"figure": "workflow_accept", **figure}))
    print(json.dumps({
        "figure": "workflow_steps", "runs": total,
        "single_jobs_per_second": round(single_rate), "steps_per_second": round(step_rate),
        "single_job_script_us": round(single_us, 1), "step_script_us": round(step_us, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
