"""Benchmark: fair share within a tier. Tenant A has a backlog of 100,000 jobs queued on
`default` (0.02 s each, a worker of 4 children draining it) when tenant B starts submitting
one job every 100 ms through the API; prints B's queue wait (accepted -> started) p50/p99,
A's backlog during the run, and what B would have waited behind A's backlog in one FIFO list
(the backlog ahead of it divided by the measured drain rate).

    python -m bench.fairness [--backlog 100000] [--seconds 20] [--rate 10]
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
from conveyor.jobstore import fairq
from conveyor.jobstore.keys import KeySpace
from conveyor.jobstore.store import JobStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=10)
    options = parser.parse_args()
    keys = KeySpace("conveyor")
    with redis_server() as server:
        store = JobStore(server.client(), Settings())
        accept_jobs(store, options.backlog, Queue.DEFAULT, task="demo.sleep",
                    args={"seconds": 0.02}, tenants=["tenant-a"])  # fmt: skip
        api, base = start_conveyor_api(server.url)
        worker = Proc("worker-default", [PYTHON, "-m", "conveyor", "worker", "--queue",
                                         "default"], conveyor_env(server.url))  # fmt: skip
        client = server.client()
        waits: list[float] = []
        try:
            while fairq.ready_count(client, keys, "default", "tenant-a") == options.backlog:
                time.sleep(0.1)
            time.sleep(5)  # the worker is busy with A's backlog
            before = fairq.ready_count(client, keys, "default", "tenant-a")
            started = time.monotonic()
            ids = []
            auth = {"Authorization": f"Bearer {BENCH_KEY}"}  # tenant "bench" is B
            with httpx.Client(base_url=base, headers=auth) as http:
                interval, next_at = 1 / options.rate, time.monotonic()
                end = next_at + options.seconds
                while next_at < end:
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    reply = http.post("/v1/jobs", json={"task": "demo.echo", "args": {}})
                    ids.append(reply.json()["id"])
                    next_at += interval
                after = fairq.ready_count(client, keys, "default", "tenant-a")
                drain_rate = (before - after) / (time.monotonic() - started)
                deadline = time.monotonic() + 60
                for job_id in ids:
                    while True:
                        record = client.hmget(f"conveyor:job:{job_id}", "created_at", "started_at")
                        if record[1] or time.monotonic() > deadline:
                            break
                        time.sleep(0.05)
                    if record[1]:
                        waits.append((float(record[1]) - float(record[0])) * 1000)
        finally:
            worker.stop()
            api.stop()
    print(f"tenant A's backlog on default: {before:,} -> {after:,} jobs "
          f"(drained at {drain_rate:,.0f} jobs/s) while tenant B submitted {len(ids)} jobs "
          f"at {options.rate:g}/s")  # fmt: skip
    print(f"B's queue wait (accepted -> started): p50 {percentile(waits, 50):.1f} ms, "
          f"p99 {percentile(waits, 99):.1f} ms, max {max(waits):.1f} ms; "
          f"{len(ids) - len(waits)} not started within 60 s")  # fmt: skip
    if drain_rate > 0:
        print(f"in one FIFO list B would have waited behind A's backlog: "
              f"~{after / drain_rate:,.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
