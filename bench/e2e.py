"""Benchmark 11: end to end on the same 2 cores. Jobs submitted over HTTP (wrk, 32
connections, `demo.echo`) while one worker (concurrency 4) runs them, against:

- Conveyor: `conveyor api` (one process) and `conveyor worker --queue default`, production
  settings (auth, rate limit checked, metrics, durable records, leases, fair share);
- the tutorial stack: an `async def` FastAPI endpoint calling `send_task` (one uvicorn
  process) and a stock Celery worker with the same Celery settings (acks-late, prefetch 1).

Prints jobs accepted per second during the load, jobs finished per second during the load,
and the time to finish every accepted job.

    python -m bench.e2e [--seconds 20] [--runs 2]
"""

import argparse
import json
import time

from bench.harness import (
    BENCH_KEY,
    PYTHON,
    Proc,
    RedisServer,
    conveyor_env,
    median,
    redis_server,
    start_baseline,
    start_conveyor_api,
    table,
    wrk,
)

BODY = json.dumps({"task": "demo.echo", "args": {"payload": {"order": 42}}})
CONNECTIONS = 32
CONCURRENCY = 4


def _worker(stack: str, server: RedisServer) -> Proc:
    if stack == "conveyor":
        argv = [PYTHON, "-m", "conveyor", "worker", "--queue", "default",
                "--concurrency", str(CONCURRENCY)]  # fmt: skip
        return Proc("e2e-conveyor-worker", argv, conveyor_env(server.url))
    argv = [PYTHON, "-m", "celery", "-A", "bench.baselines.celery_app", "worker", "-Q",
            "default", "-c", str(CONCURRENCY), "--without-gossip", "--without-mingle", "-O",
            "fair", "--loglevel", "WARNING"]  # fmt: skip
    return Proc("e2e-celery-worker", argv, conveyor_env(server.url, BENCH_BROKER_URL=server.url))


def _unfinished(stack: str, server: RedisServer) -> int:
    client = server.client()
    if stack == "conveyor":
        # Accepted, not yet succeeded (every demo.echo succeeds).
        return int(client.zcard("conveyor:index:all")) - int(
            client.zcard("conveyor:index:state:succeeded")
        )
    return int(client.llen("default")) + int(client.hlen("unacked"))


def run(stack: str, seconds: int) -> dict[str, float]:
    """One run on a fresh Redis: accepted/s and finished/s during the load, drain time."""
    with redis_server() as server:
        if stack == "conveyor":
            api, base = start_conveyor_api(server.url)
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
        else:
            api, base = start_baseline("tutorial_async", server.url)
            headers = {"Content-Type": "application/json"}
        worker = _worker(stack, server)
        try:
            time.sleep(8)  # the worker's start (both sides alike)
            started = time.monotonic()
            load = wrk(f"{base}/v1/jobs", CONNECTIONS, seconds, BODY, headers)
            load_end = time.monotonic()
            left = _unfinished(stack, server)
            while _unfinished(stack, server) > 0 and time.monotonic() - load_end < 600:
                time.sleep(0.05)
            drained = time.monotonic()
        finally:
            worker.stop()
            api.stop()
    accepted = load.requests - load.errors
    return {
        "accepted_per_second": accepted / (load_end - started),
        "finished_per_second_under_load": (accepted - left) / (load_end - started),
        "finished_per_second_overall": accepted / (drained - started),
        "drain_seconds_after_load": drained - load_end,
        "errors": load.errors,
        "p99_ms": load.p99_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    options = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"conveyor": [], "tutorial": []}
    for _ in range(options.runs):
        for stack in results:  # interleaved: both sides see the same minutes of the machine
            results[stack].append(run(stack, options.seconds))
    rows = []
    for stack, runs in results.items():

        def figure(name: str, runs: list[dict[str, float]] = runs) -> float:
            return median([r[name] for r in runs])

        rows.append([stack, f"{figure('accepted_per_second'):,.0f}",
                     f"{figure('finished_per_second_under_load'):,.0f}",
                     f"{figure('finished_per_second_overall'):,.0f}",
                     f"{figure('drain_seconds_after_load'):.1f}", f"{figure('p99_ms'):.0f}",
                     int(sum(r["errors"] for r in runs))])  # fmt: skip
        print(json.dumps({"figure": "e2e", "stack": stack, "runs": runs}))
    print(table(["stack", "accepted/s", "finished/s under load", "finished/s overall",
                 "drain after load s", "accept p99 ms", "errors"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
