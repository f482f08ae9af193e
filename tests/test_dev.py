"""`conveyor dev`: one command brings up Redis, the API, three worker tiers and beat, and
SIGTERM takes every one of them down again."""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    REPO,
    TERMINAL,
    conveyor_argv,
    free_port,
    service_env,
    wait_for_job,
    wait_until,
)

pytestmark = pytest.mark.slow


def descendants(root: int) -> set[int]:
    """Every live process below `root`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_dev_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = service_env("unused")
    del env["CONVEYOR_REDIS_URL"]  # dev starts a Redis of its own
    del env["CONVEYOR_AUTH__KEYS_FILE"]  # locally, dev runs without API keys
    del env["CONVEYOR_WEBHOOK__ALLOWED_NETWORKS"]  # dev allows loopback itself
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        conveyor_argv("dev", "--port", str(port), "--data-dir", str(tmp_path / "data")),
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    output = lambda: (tmp_path / "dev.log").read_text(errors="replace")  # noqa: E731
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert dev.poll() is None, output()
            try:
                up = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
            return up and all(f"{q}." in output() and " ready." in output() for q in ("high",))

        wait_until(ready, 60, "conveyor dev to come up", step=0.2)
        with httpx.Client(base_url=base, timeout=10) as client:
            jobs = [
                client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": q},
                                              "priority": q}).json()
                for q in ("high", "default", "low")
            ]  # fmt: skip
            for job in jobs:
                done = wait_for_job(client, job["id"], TERMINAL, timeout=60)
                assert done["state"] == "succeeded", done
        children = descendants(dev.pid)
        # redis, api (+1 uvicorn worker), 3 workers (+2 children each), beat.
        assert len(children) >= 10, children

        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0, output()
        wait_until(lambda: not any(alive(pid) for pid in children), 10, "no process left")
        text = output()
        for name in ("redis", "api", "high", "default", "low", "beat"):
            assert f"{name:>8} | " in text
        assert "stopped" in text
        assert "authentication is OFF" in text
        assert "AUTHENTICATION IS DISABLED" in text  # the API's own warning
        assert list((tmp_path / "data" / "redis").rglob("*.aof*")), "Redis must run with AOF"
    finally:
        if dev.poll() is None:  # the test failed: still leave nothing behind
            stragglers = descendants(dev.pid)
            dev.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                dev.wait(30)
            for pid in [dev.pid, *stragglers]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            dev.wait()
        log.close()
