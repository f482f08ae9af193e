"""Benchmark 2: drain N pre-queued no-op jobs per tier with `conveyor worker` (production
settings: acks-late, prefetch 1, leases, metrics on, tracing set up with no endpoint) and with
a bare Celery worker with the same Celery settings, on the same kind of private Redis, the same
messages and the same concurrency; and Conveyor again with the jobs spread over ten weighted
tenants and a per-tenant concurrency limit checked on every claim (fair share and limits on).
Prints jobs/s and the ratios.

    python -m bench.workers [--jobs 20000] [--concurrency 4] [--runs 3]
"""

import argparse
import os
import time
from pathlib import Path

from bench.harness import PYTHON, Proc, conveyor_env, median, redis_server, rss_mb, table
from bench.seed import accept_jobs
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.jobstore.results import Limits
from conveyor.jobstore.store import JobStore

# Conveyor, Conveyor with ten tenants and limits, bare Celery.
KINDS = ("conveyor", "fair", "bare")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(kind: str, queue: Queue, jobs: int, concurrency: int) -> tuple[float, dict[str, float]]:
    """Seconds from the first job taken to the queue empty and every delivery acked; the RSS
    of the worker's processes, and the CPU-ms per job of Redis, the worker's main process and
    its children over the drain."""
    with redis_server() as server:
        client = server.client()
        store = JobStore(server.client(), Settings())
        if kind == "fair":
            # Ten tenants with weights, a per-tenant limit that is checked on every claim.
            tenants = [f"tenant-{n}" for n in range(10)]
            messages = accept_jobs(store, jobs, queue, tenants=tenants, limits=Limits(weight=2))
        else:
            messages = accept_jobs(store, jobs, queue)
        if kind == "bare":
            client.delete(str(queue), "conveyor:index:all")  # the same messages, no records
            for start in range(0, len(messages), 5000):
                client.lpush(str(queue), *messages[start : start + 5000])
            argv = [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "bench.baselines.celery_app",
                "worker",
                "-Q",
                str(queue),
                "-c",
                str(concurrency),
                "--without-gossip",
                "--without-mingle",
                "-O",
                "fair",
                "--loglevel",
                "WARNING",
            ]
            env = conveyor_env(server.url, BENCH_BROKER_URL=server.url)
        else:
            argv = [
                PYTHON,
                "-m",
                "conveyor",
                "worker",
                "--queue",
                str(queue),
                "--concurrency",
                str(concurrency),
            ]
            env = conveyor_env(server.url)
            if kind == "fair":
                env["CONVEYOR_FLOW__TENANT_CONCURRENCY_PER_TIER"] = "1000"
        assert client.llen(str(queue)) == jobs
        worker = Proc(f"{kind}-worker", argv, env)
        try:
            while client.llen(str(queue)) == jobs:
                time.sleep(0.005)
            started = time.monotonic()
            pids = worker.pids()
            cpu = {"redis": server.cpu_seconds(), "main": _cpu(pids[0]),
                   "children": sum(_cpu(p) for p in pids[1:])}  # fmt: skip
            while client.llen(str(queue)) or client.hlen("unacked"):
                time.sleep(0.01)
            elapsed = time.monotonic() - started
            pids = worker.pids()
            figures = {"main": rss_mb(pids[0]), "child": max(rss_mb(p) for p in pids[1:])}
            after = {"redis": server.cpu_seconds(), "main": _cpu(pids[0]),
                     "children": sum(_cpu(p) for p in pids[1:])}  # fmt: skip
            for part, seconds in after.items():
                figures[f"cpu_ms_{part}"] = (seconds - cpu[part]) * 1000 / jobs
        finally:
            worker.stop()
        if kind != "bare":
            done = client.zcard("conveyor:index:state:succeeded")
            assert done == jobs, f"{done} of {jobs} jobs recorded as succeeded"
    return elapsed, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tiers", nargs="+", default=[str(q) for q in Queue])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    options = parser.parse_args()
    rows, cpu_rows = [], []
    for tier in options.tiers:
        rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
        memory: dict[str, dict[str, float]] = {}
        for _ in range(options.runs):
            for kind in options.kinds:
                seconds, memory[kind] = drain(kind, Queue(tier), options.jobs, options.concurrency)
                rates[kind].append(options.jobs / seconds)
        for kind, figures in memory.items():
            cpu_rows.append([tier, kind, f"{median(rates[kind]):,.0f}",
                             *(f"{figures[f'cpu_ms_{part}']:.2f}"
                               for part in ("redis", "main", "children"))])  # fmt: skip
        if set(options.kinds) != set(KINDS):
            continue
        conveyor, bare = median(rates["conveyor"]), median(rates["bare"])
        fair = median(rates["fair"])
        rows.append(
            [
                tier,
                options.jobs,
                f"{conveyor:,.0f}",
                f"{fair:,.0f} ({fair / conveyor:.2f}x)",
                f"{bare:,.0f}",
                f"{conveyor / bare:.2f}",
                f"{memory['conveyor']['main']:.0f} / {memory['conveyor']['child']:.0f}",
                f"{memory['bare']['main']:.0f} / {memory['bare']['child']:.0f}",
            ]
        )
    print(table(["tier", "side", "jobs/s", "CPU-ms per job: Redis", "worker main", "children"],
                cpu_rows))  # fmt: skip
    if not rows:
        return
    print(
        table(
            [
                "tier",
                "jobs",
                "conveyor jobs/s",
                "10 tenants + limits jobs/s",
                "bare Celery jobs/s",
                "ratio",
                "conveyor RSS MB main/child",
                "bare RSS MB main/child",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
