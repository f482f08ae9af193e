"""Benchmark 3: priority isolation. The low tier is flooded with 10,000 jobs (its workers all
busy) while the high tier receives 20 jobs/s through the API; prints the high tier's queue
wait (accepted → started) p50/p99, and the low tier's backlog during the run.

    python -m bench.isolation [--seconds 30] [--rate 20] [--flood 10000]
"""

import argparse
import time

import httpx

from bench.harness import (
    BENCH_KEY,
    PYTHON,
    Proc,
    conveyor_env,
    percentile,
    redis_server,
    start_conveyor_api,
)
from bench.seed import accept_jobs
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.store import JobStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--flood", type=int, default=10_000)
    options = parser.parse_args()
    with redis_server() as server:
        store = JobStore(server.client(), Settings())
        accept_jobs(store, options.flood, Queue.LOW, task="demo.sleep", args={"seconds": 0.2})
        api, base = start_conveyor_api(server.url)
        workers = [
            Proc(
                f"worker-{q}",
                [PYTHON, "-m", "conveyor", "worker", "--queue", q],
                conveyor_env(server.url),
            )
            for q in ("low", "high")
        ]
        client = server.client()
        try:
            time.sleep(8)  # both tiers up; the low tier is busy with its backlog
            backlog_before = client.llen("low")
            ids = []
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {BENCH_KEY}"}
            ) as http:
                interval, next_at = 1 / options.rate, time.monotonic()
                end = next_at + options.seconds
                while next_at < end:
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    reply = http.post(
                        "/v1/jobs",
                        json={"task": "demo.echo", "args": {"payload": 1}, "priority": "high"},
                    )
                    ids.append(reply.json()["id"])
                    next_at += interval
                backlog_after = client.llen("low")
                deadline = time.monotonic() + 30
                waits = []
                for job_id in ids:
                    while True:
                        job = http.get(f"/v1/jobs/{job_id}").json()
                        if job["started_at"] or time.monotonic() > deadline:
                            break
                        time.sleep(0.05)
                    store_record = client.hmget(
                        f"conveyor:job:{job_id}", "created_at", "started_at"
                    )
                    waits.append((float(store_record[1]) - float(store_record[0])) * 1000)
        finally:
            for worker in workers:
                worker.stop()
            api.stop()
    print(
        f"high tier: {len(waits)} jobs at {options.rate:g}/s for {options.seconds:g} s while the "
        f"low tier's backlog went {backlog_before} -> {backlog_after}"
    )
    print(
        f"queue wait (accepted -> started): p50 {percentile(waits, 50):.1f} ms, "
        f"p99 {percentile(waits, 99):.1f} ms, max {max(waits):.1f} ms"
    )


if __name__ == "__main__":
    main()
