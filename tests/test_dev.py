"""`conveyor dev`: one command brings up Redis, the API, three worker tiers, beat and the
exporter, quietly, and says once when all of them are ready; SIGTERM takes every one of them
down again; Ctrl-C with a running job waits for it (saying so) or, pressed again, hands it back,
never counting a worker death."""

import contextlib
import fcntl
import os
import pty
import signal
import subprocess
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class Dev:
    """A running `conveyor dev` and its output."""

    process: subprocess.Popen[bytes]
    log_path: Path
    base: str

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.output()
            return "ready in" in self.output()

        wait_until(ready, 90, "conveyor dev to say it is ready", step=0.2)

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        wait_until(lambda: text in self.output(), timeout, repr(text), step=0.1)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=10)


def dev_env(**extra: str) -> dict[str, str]:
    env = service_env("unused")
    del env["CONVEYOR_REDIS_URL"]  # dev starts a Redis of its own
    del env["CONVEYOR_AUTH__KEYS_FILE"]  # locally, dev runs without API keys
    del env["CONVEYOR_WEBHOOK__ALLOWED_NETWORKS"]  # dev allows loopback itself
    env["CONVEYOR_METRICS__EXPORTER_PORT"] = str(free_port())
    env.update(extra)
    return env


@contextlib.contextmanager
def running_dev(data: Path, log_path: Path, env: dict[str, str]) -> Iterator[Dev]:
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        conveyor_argv("dev", "--port", str(port), "--data-dir", str(data)),
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield Dev(process, log_path, f"http://127.0.0.1:{port}")
    finally:
        if process.poll() is None:  # the test failed: still leave nothing behind
            stragglers = descendants(process.pid)
            process.send_signal(signal.SIGKILL)
            for pid in [process.pid, *stragglers]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_dev_runs_everything_quietly_and_stops_cleanly(tmp_path: Path) -> None:
    with running_dev(tmp_path / "data", tmp_path / "dev.log", dev_env()) as dev:
        dev.wait_ready()
        start_up = dev.output()
        # Quiet: no Celery banner, no root warning, no INFO lines; one summary at the end.
        assert len(start_up.splitlines()) <= 12, start_up
        assert "-------------- " not in start_up, start_up
        assert "SecurityWarning" not in start_up, start_up
        assert " INFO " not in start_up, start_up
        summary = start_up[start_up.index("ready in") :]
        assert f"API      {dev.base}" in summary
        assert f"docs {dev.base}/docs" in summary
        assert f"console  {dev.base}/ui/" in summary
        assert "auth     OFF" in summary
        assert "Redis    redis://127.0.0.1:" in summary
        assert "metrics  " in summary
        assert "AUTHENTICATION IS DISABLED" in start_up  # the API's own warning
        with dev.client() as client:
            # The summary comes once every component answers: the API does already.
            assert client.get("/readyz").status_code == 200
            jobs = [
                client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": q},
                                              "priority": q}).json()
                for q in ("high", "default", "low")
            ]  # fmt: skip
            for job in jobs:
                done = wait_for_job(client, job["id"], TERMINAL, timeout=60)
                assert done["state"] == "succeeded", done
        children = descendants(dev.process.pid)
        # redis, api (+1 uvicorn worker), 3 workers (+2 children each), beat, exporter.
        assert len(children) >= 11, children

        dev.process.send_signal(signal.SIGTERM)
        assert dev.process.wait(60) == 0, dev.output()
        wait_until(lambda: not any(alive(pid) for pid in children), 10, "no process left")
        text = dev.output()
        assert "     api | " in text  # children's warnings are relayed, prefixed
        assert "stopping" in text
        assert "stopped" in text
        assert "Traceback" not in text
        assert list((tmp_path / "data" / "redis").rglob("*.aof*")), "Redis must run with AOF"


def test_verbose_relays_every_log(tmp_path: Path) -> None:
    env = dev_env()
    port = free_port()
    argv = conveyor_argv("dev", "--verbose", "--port", str(port), "--data-dir", str(tmp_path))
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        dev = Dev(process, log_path, f"http://127.0.0.1:{port}")
        try:
            dev.wait_ready()
            text = dev.output()
            assert " ready." in text  # Celery's INFO line of each worker
            assert "Ready to accept connections" in text  # Redis's
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0


def start_long_job(dev: Dev) -> str:
    with dev.client() as client:
        job = client.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 120}})
        job_id: str = job.json()["id"]
        wait_for_job(client, job_id, {"running"}, timeout=60)
    return job_id


def after_restart(data: Path, log_path: Path, job_id: str) -> dict[str, object]:
    """Start dev again on the same data: the job runs again, a new attempt, no death."""
    with running_dev(data, log_path, dev_env()) as dev, dev.client() as client:
        dev.wait_ready()

        def rerun() -> dict[str, object] | None:
            job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["attempts"] == 2 and job["state"] == "running" else None

        job: dict[str, object] = wait_until(rerun, 60, "the job to run again")
        dev.process.send_signal(signal.SIGINT)
        dev.wait_for_output("Ctrl-C again to hand it back now")
        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(60) == 0
    return job


def test_ctrl_c_twice_hands_the_running_job_back_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = dev_env(CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS="600")
    with running_dev(data, tmp_path / "first.log", env) as dev:
        dev.wait_ready()
        job_id = start_long_job(dev)
        dev.process.send_signal(signal.SIGINT)
        dev.wait_for_output(
            "waiting up to 600 s for 1 running job; Ctrl-C again to hand it back now"
        )
        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(60) == 0, dev.output()
        text = dev.output()
    assert "1 job handed back to the queue (not a worker death)" in text
    assert "did not stop in time" not in text
    assert "Traceback" not in text
    assert "WorkerLostError" not in text
    assert "Hitting Ctrl+C" not in text  # Celery's own words; the supervisor says what happens
    job = after_restart(data, tmp_path / "second.log", job_id)
    assert job["deaths"] == 0, job


def test_ctrl_c_waits_for_the_workers_shutdown_timeout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A deadline longer than the supervisor's old 20 s kill would have cut short.
    env = dev_env(CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS="22")
    with running_dev(data, tmp_path / "first.log", env) as dev:
        dev.wait_ready()
        job_id = start_long_job(dev)
        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(90) == 0, dev.output()
        text = dev.output()
    assert "waiting up to 22 s for 1 running job; Ctrl-C again to hand it back now" in text
    assert "did not stop in time" not in text  # the worker handed it back itself
    assert "Traceback" not in text
    assert "WorkerLostError" not in text
    job = after_restart(data, tmp_path / "second.log", job_id)
    assert job["deaths"] == 0, job


def test_ctrl_c_under_make_reaches_the_supervisor_alone(tmp_path: Path) -> None:
    """`make dev` in a terminal: Ctrl-C is for the supervisor; `make` must neither die on
    the second one (orphaning the supervisor mid-shutdown) nor report an interruption."""
    env = dev_env(CONVEYOR_WORKER__SHUTDOWN_TIMEOUT_SECONDS="600")
    port = free_port()
    argv = " ".join(conveyor_argv("dev", "--port", str(port), "--data-dir", str(tmp_path / "d")))
    (tmp_path / "Makefile").write_text(f"dev:\n\t{argv}\n")
    main, child = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    shell = subprocess.Popen(
        ["sh", "-c", "make -s dev; echo make exited with $?"], cwd=tmp_path, env=env,
        stdin=child, stdout=child, stderr=child, start_new_session=True,
        preexec_fn=controlling_terminal,
    )  # fmt: skip
    os.close(child)
    screen = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(main, 65536):
                screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    text = lambda: screen.decode(errors="replace")  # noqa: E731
    try:
        wait_until(lambda: "ready in" in text(), 90, "dev to be ready", step=0.2)
        dev = Dev(shell, tmp_path / "unused", f"http://127.0.0.1:{port}")
        start_long_job(dev)
        os.write(main, b"\x03")  # Ctrl-C, as typed
        wait_until(lambda: "Ctrl-C again to hand it back now" in text(), 60, "the wait notice")
        os.write(main, b"\x03")
        wait_until(lambda: "make exited with" in text(), 60, "make to exit")
        assert "make exited with 0" in text(), text()
        assert "1 job handed back to the queue" in text(), text()
        assert "Interrupt" not in text(), text()  # make's "*** [dev] Interrupt"
        assert shell.wait(30) == 0
    finally:
        if shell.poll() is None:
            for pid in [shell.pid, *descendants(shell.pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            shell.wait()
        os.close(main)
        reader.join(5)
