"""Benchmark 4: end-to-end latency at light load. One demo.echo every 50 ms through the API,
with a default-tier worker; prints accept → start and accept → finished, p50/p99 (from the job
records: the API stamps created_at, the worker started_at and finished_at).

    python -m bench.latency [--jobs 400] [--interval 0.05]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--interval", type=float, default=0.05)
    options = parser.parse_args()
    with redis_server() as server:
        api, base = start_conveyor_api(server.url)
        worker = Proc(
            "worker",
            [PYTHON, "-m", "conveyor", "worker", "--queue", "default"],
            conveyor_env(server.url),
        )
        client = server.client()
        try:
            time.sleep(8)
            ids = []
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {BENCH_KEY}"}
            ) as http:
                for _ in range(options.jobs):
                    ids.append(http.post("/v1/jobs", json={"task": "demo.echo"}).json()["id"])
                    time.sleep(options.interval)
            deadline = time.monotonic() + 60
            while client.zcard("conveyor:index:state:succeeded") < len(ids):
                if time.monotonic() > deadline:
                    raise SystemExit("jobs did not finish")
                time.sleep(0.1)
            start, finish = [], []
            for job_id in ids:
                created, started, finished = map(
                    float,
                    client.hmget(
                        f"conveyor:job:{job_id}", "created_at", "started_at", "finished_at"
                    ),
                )
                start.append((started - created) * 1000)
                finish.append((finished - created) * 1000)
        finally:
            worker.stop()
            api.stop()
    print(f"{len(ids)} jobs, one every {options.interval * 1000:.0f} ms")
    for name, values in (("accept -> start", start), ("accept -> finished", finish)):
        print(f"{name}: p50 {percentile(values, 50):.1f} ms, p99 {percentile(values, 99):.1f} ms")


if __name__ == "__main__":
    main()
