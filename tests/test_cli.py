"""`conveyor jobs` and `conveyor tasks` against a live platform: under a pseudo-terminal the
progress bar is drawn live; exit codes reflect the job's end; `--output json` is for scripts."""

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

from conveyor.client.cli import Output, _print_job, number, out
from conveyor.jobstore.model import Job
from tests.support.auth import ADMIN_KEY
from tests.support.processes import (
    REPO,
    Platform,
    conveyor_argv,
    free_port,
    wait_for_job,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli_env(platform: Platform) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        PYTHONPATH=str(REPO), CONVEYOR_URL=platform.base_url, CONVEYOR_API_KEY=ADMIN_KEY,
        TERM="xterm-256color", COLUMNS="120", LINES="40",
    )  # fmt: skip
    return env


def run_in_pty(platform: Platform, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `conveyor *args` on a pseudo-terminal; returns the exit code and all it drew."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        conveyor_argv(*args), stdin=child, stdout=child, stderr=child,
        env=cli_env(platform), cwd=REPO, close_fds=True,
    )  # fmt: skip
    os.close(child)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            output.extend(chunk)
        elif process.poll() is not None:
            break
    os.close(main)
    code = process.wait(10)
    return code, ANSI.sub("", output.decode(errors="replace"))


def run(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        conveyor_argv(*args), env=cli_env(platform), cwd=REPO,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_submit_wait_draws_a_live_progress_bar(platform: Platform) -> None:
    code, screen = run_in_pty(
        platform, "jobs", "submit", "demo.sleep", "--args", '{"seconds": 3}', "--wait"
    )
    assert code == 0, screen
    assert "━" in screen  # rich's bar, redrawn as progress arrives
    assert "running: 1s left" in screen or "running: 2s left" in screen, screen
    assert "succeeded" in screen
    assert '"slept": 3.0' in screen


def test_exit_codes_follow_the_jobs_end(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    args_file = tmp_path / "args.json"
    args_file.write_text('{"mode": "permanent", "message": "boom"}')
    code, screen = run_in_pty(
        platform, "jobs", "submit", "demo.fail", "--args", f"@{args_file}", "--wait"
    )
    assert code == 1, screen
    assert "boom" in screen

    with platform.http() as client:
        job = client.post("/v1/jobs", json={"task": "demo.echo", "delay_seconds": 3600}).json()
        timed_out = run(platform, "jobs", "watch", job["id"], "--timeout", "1")
        assert timed_out.returncode == 4, timed_out.stderr
        main, child = pty.openpty()
        watcher = subprocess.Popen(
            conveyor_argv("jobs", "watch", job["id"]), stdin=child, stdout=child, stderr=child,
            env=cli_env(platform), cwd=REPO,
        )  # fmt: skip
        os.close(child)
        time.sleep(2)  # let it attach to the stream
        client.post(f"/v1/jobs/{job['id']}/cancel")
        assert watcher.wait(30) == 3
        os.close(main)


def test_json_output_and_the_catalogue(platform: Platform) -> None:
    submitted = run(platform, "jobs", "submit", "demo.echo", "--args", '{"payload": [1, 2]}',
                    "--priority", "high", "--wait", "-o", "json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert (job["state"], job["result"], job["queue"]) == ("succeeded", {"payload": [1, 2]}, "high")

    got = json.loads(run(platform, "jobs", "get", job["id"], "-o", "json").stdout)
    assert got["id"] == job["id"]
    listed = json.loads(run(platform, "jobs", "list", "--queue", "high", "-o", "json").stdout)
    assert job["id"] in [j["id"] for j in listed]

    catalogue = json.loads(run(platform, "tasks", "-o", "json").stdout)
    sleep = next(t for t in catalogue if t["name"] == "demo.sleep")
    assert "seconds" in sleep["args_schema"]["properties"]
    text = run(platform, "tasks").stdout
    assert "demo.sleep" in text
    assert "seconds" in text


def test_errors_exit_5_with_the_problem(platform: Platform) -> None:
    invalid = run(platform, "jobs", "submit", "demo.sleep", "--args", '{"seconds": -1}')
    assert invalid.returncode == 5
    assert "#/args/seconds" in invalid.stderr
    missing = run(platform, "jobs", "get", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 5
    assert "404" in missing.stderr
    bad_args = run(platform, "jobs", "submit", "demo.echo", "--args", "[1]")
    assert bad_args.returncode == 2


def test_list_prints_whole_ids_and_commands_take_a_prefix(platform: Platform) -> None:
    with platform.http() as client:
        job = client.post("/v1/jobs", json={"task": "demo.echo", "delay_seconds": 3600}).json()
    narrow = {**cli_env(platform), "COLUMNS": "80"}
    listed = subprocess.run(
        conveyor_argv("jobs", "list", "--limit", "5"), env=narrow, cwd=REPO,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert job["id"] in listed.stdout, listed.stdout
    assert all(len(line) <= 80 for line in listed.stdout.splitlines()), listed.stdout
    got = run(platform, "jobs", "get", job["id"][:8], "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["id"] == job["id"]
    cancelled = run(platform, "jobs", "cancel", job["id"][:10])
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout
    unknown = run(platform, "jobs", "get", "zzzz")
    assert unknown.returncode == 5
    assert "no job id starts with 'zzzz'" in unknown.stderr


def test_progress_figures_are_rounded_for_display() -> None:
    assert [number(v) for v in (3.51e-07, 2.5, 5.0, 1 / 3, -1e-9)] == ["0", "2.5", "5", "0.33", "0"]
    job = Job.model_validate(
        {"id": "j", "tenant": "t", "task": "demo.sleep", "queue": "low", "state": "running",
         "args": {}, "max_retries": 0, "created_at": "2026-01-01T00:00:00Z",
         "progress": {"current": 3.51e-07, "total": 5.0, "message": "5s left"}}
    )  # fmt: skip
    with out.capture() as captured:
        _print_job(job, Output.TEXT)
    assert "0/5 5s left" in captured.get()
    assert "e-07" not in captured.get()


def test_a_connection_error_says_where_it_tried(platform: Platform) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run(platform, "jobs", "list", "--url", url)
    assert result.returncode == 5
    assert f"cannot reach the API at {url}" in result.stderr
    assert "is the platform running?" in result.stderr
    # Each retry was said as it came, before the final error: never seconds of silence.
    retries = re.findall(r"retry (\d)/5 in \d+\.\d s", result.stderr)
    assert retries == ["1", "2", "3", "4", "5"], result.stderr
    assert result.stderr.index("retry 1/5") < result.stderr.index("cannot reach the API")
    assert "Traceback" not in result.stderr


def test_submit_many_sends_json_lines_through_the_batch_route(platform: Platform, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = [json.dumps({"task": "demo.echo", "args": {"payload": n}}) for n in range(3)]
    lines.insert(1, "")
    good = tmp_path / "jobs.jsonl"
    good.write_text("\n".join(lines) + "\n")
    accepted = run(platform, "jobs", "submit-many", str(good), "-o", "json")
    assert accepted.returncode == 0, accepted.stderr
    outcomes = json.loads(accepted.stdout)
    assert [o["status"] for o in outcomes] == [202, 202, 202]
    assert len({o["id"] for o in outcomes}) == 3

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(lines[0] + "\n" + json.dumps({"task": "demo.sleep", "args": {"seconds": -1}}))
    refused = run(platform, "jobs", "submit-many", str(mixed))
    assert refused.returncode == 1
    assert "1 of 2 accepted" in refused.stdout
    assert "line 2: 422" in refused.stdout
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text("{nope\n")
    assert run(platform, "jobs", "submit-many", str(not_json)).returncode == 5


def test_workflows_submit_wait_draws_a_bar_over_steps_and_exits_with_the_outcome(
    platform: Platform,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    chord = tmp_path / "chord.json"
    chord.write_text(json.dumps({"chord": {
        "parallel": [{"task": "demo.sleep", "args": {"seconds": 0.5}} for _ in range(3)],
        "then": {"task": "demo.echo", "inputs": {"payload": "*"}},
    }}))  # fmt: skip
    code, screen = run_in_pty(platform, "workflows", "submit", str(chord), "--wait")
    assert code == 0, screen
    assert "━" in screen  # the bar over the steps
    assert "/4" in screen  # M/N steps done
    assert "succeeded" in screen
    assert "step-3" in screen

    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps({"chain": [
        {"task": "demo.fail", "args": {"mode": "permanent", "message": "boom"}},
        {"task": "demo.echo"},
    ]}))  # fmt: skip
    failed = run(platform, "workflows", "submit", str(failing), "--wait", "-o", "json")
    assert failed.returncode == 1, failed.stderr
    workflow = json.loads(failed.stdout)
    assert [s["state"] for s in workflow["steps"]] == ["failed", "cancelled"]
    got = json.loads(run(platform, "workflows", "get", workflow["id"], "-o", "json").stdout)
    assert got["state"] == "failed"
    listed = run(platform, "workflows", "list", "--state", "failed")
    assert workflow["id"] in listed.stdout
    not_an_object = tmp_path / "list.json"
    not_an_object.write_text("[1]")
    invalid = run(platform, "workflows", "submit", str(not_an_object))
    assert invalid.returncode == 2
    assert "JSON object" in invalid.stderr


def test_schedules_commands(platform: Platform, tmp_path: Path) -> None:
    body = tmp_path / "schedule.json"
    body.write_text(json.dumps({"name": "cli-nightly", "task": "demo.echo",
                                "args": {"payload": 1}, "cron": "0 3 * * *",
                                "timezone": "Europe/Paris"}))  # fmt: skip
    created = run(platform, "schedules", "create", str(body), "-o", "json")
    assert created.returncode == 0, created.stderr
    schedule_id = json.loads(created.stdout)["id"]
    listed = run(platform, "schedules", "list")
    assert "cli-nightly" in listed.stdout
    assert "0 3 * * * (Europe/Paris)" in listed.stdout
    assert run(platform, "schedules", "pause", schedule_id).returncode == 0
    shown = run(platform, "schedules", "get", schedule_id, "-o", "json")
    assert json.loads(shown.stdout)["paused"] is True
    triggered = run(platform, "schedules", "trigger", schedule_id)
    assert triggered.returncode == 0
    assert run(platform, "jobs", "get", triggered.stdout.strip()).returncode == 0
    assert run(platform, "schedules", "delete", schedule_id).returncode == 0
    assert run(platform, "schedules", "get", schedule_id).returncode == 5


def test_sigusr2_makes_a_worker_print_every_process_stack(platform: Platform) -> None:
    """What a hung worker is doing: `kill -USR2` of each of its processes prints the stacks of
    its main process (Celery's event loop) and of each prefork child (waiting for a job), and the
    worker goes on serving."""
    worker = next(s for s in platform.services if s.name == "worker-default")
    assert len(worker.group_pids()) == 3  # main + 2 prefork children
    stacks = worker.dump_stacks()
    assert stacks.count("Current thread") == 3, stacks
    assert "celery/worker/loops.py" in stacks  # the main process's event loop
    assert "in workloop" in stacks  # a prefork child waiting for a job
    assert worker.process.poll() is None
    with platform.http() as client:
        job = client.post("/v1/jobs", json={"task": "demo.echo", "args": {"payload": "hi"}})
        assert job.status_code == 202, job.text
        wait_for_job(client, job.json()["id"], {"succeeded"})
