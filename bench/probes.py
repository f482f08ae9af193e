"""Benchmark 6: what a worker pod's probes cost. Before: an exec probe, `conveyor worker
--check`, a Python process started per probe. After: `GET /livez` and `GET /readyz` answered
by the worker's own metrics server. Prints CPU seconds and peak memory per probe, and the
share of a pod's CPU request (250m) that three probes per 30 s take.

    python -m bench.probes [--probes 20]
"""

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.harness import WORK, Proc, conveyor_env, free_port, redis_server, table, wait_until

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))
TICKS = os.sysconf("SC_CLK_TCK")
PROBES_PER_30S = 3  # liveness every 30 s and readiness every 15 s, as the chart had them
POD_CPU_REQUEST = 0.25


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def exec_probe(env: dict[str, str], count: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) per `conveyor worker --check`, as the kubelet runs it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(count):
        done = subprocess.run([CONVEYOR, "worker", "--queue", "high", "--check"], env=env,
                              capture_output=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu / count, after.ru_maxrss / 1024  # the largest child: every probe is alike


def http_probe(worker_pid: int, port: int, count: int) -> float:
    """CPU seconds the worker's main process spends per /livez + /readyz answer."""
    time.sleep(2)
    idle_before = cpu_seconds(worker_pid)
    time.sleep(5)
    idle_rate = (cpu_seconds(worker_pid) - idle_before) / 5
    before, started = cpu_seconds(worker_pid), time.monotonic()
    with httpx.Client() as client:
        for index in range(count):
            path = "/livez" if index % 2 else "/readyz"
            assert client.get(f"http://127.0.0.1:{port}{path}").status_code == 200
    spent = cpu_seconds(worker_pid) - before - idle_rate * (time.monotonic() - started)
    return max(spent, 0.0) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=20)
    options = parser.parse_args()
    with redis_server() as server:
        port = free_port()
        heartbeat = WORK / "heartbeat"
        env = conveyor_env(
            server.url,
            CONVEYOR_METRICS__WORKER_PORT=str(port),
            CONVEYOR_WORKER__HEARTBEAT_FILE=str(heartbeat),
        )
        worker = Proc("worker", [CONVEYOR, "worker", "--queue", "high"], env)
        try:
            wait_until(lambda: heartbeat.with_name("heartbeat-high").exists(), 60, "the worker")
            exec_cpu, exec_rss = exec_probe(env, options.probes)
            http_cpu = http_probe(worker.process.pid, port, options.probes * 50)
        finally:
            worker.stop()

    def share(cpu: float) -> str:
        return f"{100 * cpu * PROBES_PER_30S / 30 / POD_CPU_REQUEST:.2f} %"

    print(table(
        ["probe", "CPU-s per probe", "peak RSS per probe", "share of a 250m request"],
        [["exec `conveyor worker --check`", f"{exec_cpu:.3f}", f"{exec_rss:.0f} MB",
          share(exec_cpu)],
         ["HTTP /livez, /readyz (in process)", f"{http_cpu * 1000:.3f} ms", "0 MB (no process)",
          share(http_cpu)]],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
