"""Redis' own instructions per accepted job (accept.lua), counted by valgrind's callgrind on
a private `redis-server`: repeatable whatever else the machine is doing, unlike µs (bench/
README.md, performance round 3). Jobs are `demo.echo` with an idempotency key, a rate limit
and a queue-depth limit, as the API sends them, `--per-call` jobs per accept call.

    .venv/bin/python -m bench.redis_instructions [--jobs 2000] [--per-call 1 16 64]

Counts only while Redis runs scripts (`--toggle-collect=evalGenericCommand`).
"""

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.harness import free_port, wait_until
from conveyor.core.catalog import load_catalog
from conveyor.core.settings import Settings
from conveyor.jobstore._calls import accept_calls
from conveyor.jobstore.results import Limits
from conveyor.jobstore.scripts import ACCEPT
from conveyor.jobstore.submission import Submission, prepare


def instructions_per_job(jobs: int, per_call: int) -> float:
    """Callgrind's instruction total of Redis' script calls, divided by the jobs accepted."""
    import redis

    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is required (apt-get install valgrind)")
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="conveyor-callgrind-")) / "callgrind.out"
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--toggle-collect=evalGenericCommand",
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        wait_until(lambda: _answers(client), 60, "redis-server under valgrind")
        client.script_load(ACCEPT.source)
        spec = load_catalog([])["demo.echo"]
        limits = Limits(rate_per_second=1_000_000.0, burst=1_000_000, max_queue_depth=10_000_000)
        prepared = []
        for n in range(jobs):
            submission = Submission.of(spec, tenant="bench", args={"payload": {"order": 42}},
                                       idempotency_key=f"bench-{n}")  # fmt: skip
            prepared.append((*prepare(spec, submission, Settings().worker), limits))
        groups = [prepared[start : start + per_call] for start in range(0, jobs, per_call)]
        calls = [argv for group in groups for argv, _ in accept_calls("conveyor", group)]
        for start in range(0, len(calls), 100):
            with client.pipeline(transaction=False) as pipe:
                for argv in calls[start : start + 100]:
                    pipe.evalsha(ACCEPT.sha, 0, *argv)
                pipe.execute()
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    totals = [
        line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))
    ]
    return int(totals[-1].split()[1]) / jobs


def _answers(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.ConnectionError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--per-call", type=int, nargs="+", default=[1, 16, 64])
    options = parser.parse_args()
    for per_call in options.per_call:
        figure = round(instructions_per_job(options.jobs, per_call))
        print(json.dumps({"figure": "redis_instructions", "jobs_per_call": per_call,
                          "instructions_per_job": figure}))  # fmt: skip


if __name__ == "__main__":
    main()
