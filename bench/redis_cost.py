"""Benchmark: the Redis cost of a job, for docs/scaling.md. Redis CPU (the µs of
`INFO commandstats`, which is time spent executing commands, Lua included) per accepted job
(POST /v1/jobs through `conveyor api`) and per executed job (`conveyor worker`: delivery,
claim, start, finish, ack, heartbeats), and memory per queued and per finished job.

    python -m bench.redis_cost [--jobs 3000]
"""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.harness import (
    BENCH_KEY,
    PYTHON,
    Proc,
    conveyor_env,
    redis_server,
    start_conveyor_api,
)
from conveyor.core.settings import Settings
from conveyor.jobstore._calls import ACCEPT_BATCH

BODY = {"task": "demo.echo", "args": {"payload": {"order": 42}}}


def command_usec(info: dict[str, dict[str, float]]) -> tuple[float, int]:
    """µs and calls of the commands clients sent since the last CONFIG RESETSTAT: a script's
    own time (EVALSHA) already holds the commands it ran, which commandstats also counts
    under their names, so those are estimated from their calls inside scripts and left out.
    """
    script = {k: v for k, v in info.items() if k in ("cmdstat_evalsha", "cmdstat_eval")}
    usec = sum(v["usec"] for v in script.values())
    calls = int(sum(v["calls"] for v in script.values()))
    return usec, calls


# Commands only scripts run (counted inside EVALSHA's time already).
_SCRIPT_ONLY = {"cmdstat_hset", "cmdstat_hget", "cmdstat_hmget", "cmdstat_zadd", "cmdstat_zrem",
                "cmdstat_hincrby", "cmdstat_expire", "cmdstat_exists", "cmdstat_set",
                "cmdstat_get", "cmdstat_del", "cmdstat_zscore", "cmdstat_hsetnx",
                "cmdstat_pexpire", "cmdstat_incr", "cmdstat_hdel", "cmdstat_persist"}  # fmt: skip


def _others(info: dict[str, dict[str, float]]) -> float:
    """µs of the commands clients sent directly (BLMOVE, LMOVE, ZADD of heartbeats...), an
    upper bound: a command both scripts and clients use is left out as the scripts'."""
    skip = {"cmdstat_evalsha", "cmdstat_eval", *_SCRIPT_ONLY}
    return sum(v["usec"] for k, v in info.items() if k.startswith("cmdstat_") and k not in skip)


def cpu_seconds(client: object) -> float:
    """Redis' own CPU (user + system), networking included."""
    cpu = client.info("cpu")  # type: ignore[attr-defined]
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def commandstats(client: object) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = client.info("commandstats")  # type: ignore[attr-defined]
    return result


def accept_script_alone(per_call: int, calls: int = 5000) -> float:
    """µs of Redis time per job accepted by accept.lua with nothing else running, `per_call`
    jobs per script call (1: POST /v1/jobs; up to ACCEPT_BATCH: POST /v1/jobs/batch): the
    script fed from one pipelined client (no API process competing with Redis for the cores),
    each job with an idempotency key, a rate limit and a queue-depth limit, as the API sends
    it."""
    from conveyor.core.catalog import load_catalog
    from conveyor.jobstore import _calls
    from conveyor.jobstore.results import Limits
    from conveyor.jobstore.scripts import ACCEPT
    from conveyor.jobstore.submission import Submission, prepare

    spec = load_catalog([])["demo.echo"]
    settings = Settings()
    limits = Limits(rate_per_second=1_000_000.0, burst=1_000_000, max_queue_depth=10_000_000)
    with redis_server() as server:
        client = server.client()
        client.script_load(ACCEPT.source)
        jobs = []
        for n in range(calls):
            submission = Submission.of(spec, tenant="bench", args={"payload": {"order": 42}},
                                       idempotency_key=f"bench-{n}")  # fmt: skip
            job, message = prepare(spec, submission, settings.worker)
            jobs.append((job, message, limits))
        args = [
            argv
            for start in range(0, calls, per_call)
            for argv, _ in _calls.accept_calls("conveyor", jobs[start : start + per_call])
        ]
        client.config_resetstat()
        for start in range(0, len(args), 100):
            pipe = client.pipeline(transaction=False)
            for argv in args[start : start + 100]:
                pipe.evalsha(ACCEPT.sha, 0, *argv)
            pipe.execute()
        usec, _ = command_usec(commandstats(client))
    return usec / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000)
    jobs = parser.parse_args().jobs
    with redis_server() as server:
        client = server.client()
        api, base = start_conveyor_api(server.url, CONVEYOR_LIMITS__RATE_PER_SECOND="0")
        try:
            memory_empty = client.info("memory")["used_memory"]
            client.config_resetstat()
            cpu_before = cpu_seconds(client)
            headers = {"Authorization": f"Bearer {BENCH_KEY}"}
            with httpx.Client(base_url=base, headers=headers, timeout=30) as http:

                def post(n: int) -> None:
                    key = {"Idempotency-Key": f"bench-{n}"}
                    assert http.post("/v1/jobs", json=BODY, headers=key).status_code == 202

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(post, range(jobs)))
            accept_usec, accept_calls = command_usec(commandstats(client))
            accept_cpu = cpu_seconds(client) - cpu_before
            accept_all = commandstats(client)
            memory_queued = client.info("memory")["used_memory"]
        finally:
            api.stop()
        client.config_resetstat()
        cpu_before = cpu_seconds(client)
        worker = Proc("worker", [PYTHON, "-m", "conveyor", "worker", "--queue", "default"],
                      conveyor_env(server.url))  # fmt: skip
        try:
            while client.zcard("conveyor:index:state:succeeded") < jobs:
                time.sleep(0.05)
            run_usec, run_calls = command_usec(commandstats(client))
            run_cpu = cpu_seconds(client) - cpu_before
            run_all = commandstats(client)
        finally:
            worker.stop()
        memory_finished = client.info("memory")["used_memory"]
    figures = {
        "jobs": jobs,
        "accept_script_alone_us": round(accept_script_alone(1), 1),
        "accept_script_batched_us_per_job": round(accept_script_alone(ACCEPT_BATCH), 1),
        "accept_script_us_per_job": round(accept_usec / jobs, 1),
        "accept_scripts_per_job": round(accept_calls / jobs, 2),
        "accept_other_us_per_job": round(_others(accept_all) / jobs, 1),
        "accept_redis_cpu_us_per_job": round(accept_cpu * 1e6 / jobs, 1),
        "execute_script_us_per_job": round(run_usec / jobs, 1),
        "execute_scripts_per_job": round(run_calls / jobs, 2),
        "execute_other_us_per_job": round(_others(run_all) / jobs, 1),
        "execute_redis_cpu_us_per_job": round(run_cpu * 1e6 / jobs, 1),
        "bytes_per_queued_job": round((memory_queued - memory_empty) / jobs),
        "bytes_per_finished_job": round((memory_finished - memory_empty) / jobs),
    }
    print(json.dumps({"figure": "redis_cost", **figures}))


if __name__ == "__main__":
    main()
