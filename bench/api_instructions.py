"""The API app's instructions per POST /v1/jobs, counted by valgrind's callgrind in process
(no HTTP server): repeatable to a fraction of a per cent whatever else the machine is doing,
where CPU-ms per request vary by ±15 % from one minute to the next here (bench/README.md,
performance round 10). For A/B runs of a change to the accept path.

    .venv/bin/python -m bench.api_instructions [--requests 1280] [--without AuditMiddleware]
    .venv/bin/python -m bench.api_instructions --batch 1000 [--requests 16]

The app is `create_app` with the benchmark's production settings (auth, rate limit, metrics,
audit) on a private Redis; 64 concurrent callers submit `demo.echo` through its ASGI
interface. Only the measured requests are counted (callgrind's instrumentation is switched on
and off around them by a small C helper built with gcc). `--without` leaves the named ASGI
middlewares out (the caller's principal is then set as the gate would), to price each one.
uvicorn's own work (the socket, HTTP parsing) is not in the count.

`--batch SIZE` counts POST /v1/jobs/batch instead: 4 callers (as `bench.batch`), each request
`SIZE` jobs with idempotency keys of their own; it prints instructions per job.
"""

import argparse
import asyncio
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import BENCH_KEY, REPO, conveyor_env, redis_server

BODY = json.dumps({"task": "demo.echo", "args": {"payload": {"order": 42}}}).encode()
CALLERS = 64
BATCH_CALLERS = 4
HELPER = """#include <valgrind/callgrind.h>
void measure_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void measure_off(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT("measured"); }
"""


def build_helper(directory: Path) -> Path:
    """The C helper switching callgrind's instrumentation on and off."""
    source, library = directory / "measure.c", directory / "libmeasure.so"
    source.write_text(HELPER)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", library, source], check=True)
    return library


def batch_body(size: int) -> bytes:
    """A batch of `size` jobs, each with an idempotency key of its own (none is a replay)."""
    jobs = [{"task": "demo.echo", "args": {"payload": {"order": i}},
             "idempotency_key": f"bench-{uuid.uuid4()}"} for i in range(size)]  # fmt: skip
    return json.dumps({"jobs": jobs}).encode()


async def submit_all(
    app: Any, bodies: list[list[bytes]], statuses: dict[int, int], principal: Any, path: str
) -> None:
    """One caller per list of `bodies`, each posting its bodies to `path` one after another."""

    async def one(body: bytes) -> None:
        headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
                   (b"authorization", f"Bearer {BENCH_KEY}".encode()),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        state: dict[str, Any] = {}
        if principal is not None:  # the gate is left out: set who calls, as it would
            state.update(principal=principal, via="api")
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000), "state": state}  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect while the answer is written
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    async def caller(mine: list[bytes]) -> None:
        for body in mine:
            await one(body)

    await asyncio.gather(*(caller(mine) for mine in bodies))


def child(requests: int, without: list[str], helper: str, batch: int) -> None:
    """Inside valgrind: build the app, warm it up, count the measured requests."""
    import uvloop
    from starlette.datastructures import Headers

    from conveyor.api.app import create_app
    from conveyor.api.auth import principal_for
    from conveyor.core.heap import settle_heap
    from conveyor.core.settings import Settings

    app = create_app(Settings())
    if without:
        app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ not in without]
    measure = ctypes.CDLL(helper)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            settle_heap()
            principal = None
            if "BodyGate" in without:
                key = [(b"authorization", f"Bearer {BENCH_KEY}".encode())]
                state = app.state.conveyor
                principal = (await principal_for(state, Headers(raw=key), "POST"))[0]
            if batch:
                path, callers = "/v1/jobs/batch", BATCH_CALLERS
                warm = [[batch_body(batch)] for _ in range(callers)]
                measured = [[batch_body(batch) for _ in range(requests // callers)]
                            for _ in range(callers)]  # fmt: skip
            else:
                path, callers = "/v1/jobs", CALLERS
                warm = [[BODY] * 20 for _ in range(callers)]
                measured = [[BODY] * (requests // callers) for _ in range(callers)]
            await submit_all(app, warm, {}, principal, path)
            statuses: dict[int, int] = {}
            measure.measure_on()
            await submit_all(app, measured, statuses, principal, path)
            measure.measure_off()
            done = requests // callers * callers
            print(json.dumps({"statuses": statuses, "jobs": done * (batch or 1)}))

    uvloop.run(run())


def count(requests: int, without: list[str], batch: int) -> tuple[float, dict[str, int]]:
    """Instructions per job of the measured requests, and their answers' statuses."""
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install valgrind gcc)")
    work = Path(tempfile.mkdtemp(prefix="conveyor-api-callgrind-"))
    helper = build_helper(work)
    with redis_server() as server:
        env = conveyor_env(server.url, CONVEYOR_METRICS__MULTIPROCESS_DIR=str(work / "metrics"))
        (work / "metrics").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
        argv = [sys.executable, "-m", "bench.api_instructions", "--child", str(helper),
                "--requests", str(requests), "--batch", str(batch),
                "--without", *without]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={work / 'callgrind.out'}.%p", *argv],
            env=env, cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
    answer = next((line for line in done.stdout.splitlines() if line.startswith("{")), None)
    if done.returncode != 0 or answer is None:
        raise SystemExit(f"the measured run failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    totals = [
        int(match.group(1))
        for dump in work.glob("callgrind.out.*")
        for match in [re.search(r"^totals: (\d+)", dump.read_text(), re.MULTILINE)]
        if match and "measured" in dump.read_text()
    ]
    report = json.loads(answer)
    print(f"(one run under valgrind: {time.monotonic() - started:.0f} s)", file=sys.stderr)
    return max(totals) / report["jobs"], report["statuses"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, help="1,280 single submissions, 16 batches")
    parser.add_argument("--batch", type=int, default=0, help="jobs per POST /v1/jobs/batch")
    parser.add_argument("--without", nargs="*", default=[], help="ASGI middlewares left out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    requests = options.requests or (16 if options.batch else 1280)
    if options.child:
        child(requests, options.without, options.child, options.batch)
        return
    per_job, statuses = count(requests, options.without, options.batch)
    left_out = f" without {', '.join(options.without)}" if options.without else ""
    what = (
        f"job of POST /v1/jobs/batch ({options.batch} per batch)"
        if options.batch
        else "POST /v1/jobs"
    )
    print(f"{per_job / 1000:,.1f}k instructions per {what}{left_out} (statuses {statuses})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts run to run
    main()
