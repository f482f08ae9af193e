"""The image's entrypoint, `conveyor`, as the container runs it (a plain process)."""

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conveyor.core.apikeys import hash_key, parse_keys
from tests.conftest import fresh_db
from tests.support.auth import ADMIN_KEY, KEYS_FILE
from tests.support.processes import (
    REPO,
    TERMINAL,
    RedisServer,
    free_port,
    service_env,
    wait_for_job,
    wait_until,
)

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CONVEYOR, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(Path(sys.executable).parent), **env})  # fmt: skip


def test_every_role_is_a_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    for role in ("api", "worker", "beat", "exporter", "dev"):
        assert role in result.stdout


def test_worker_check_fails_without_a_heartbeat_and_passes_with_one(tmp_path: Path) -> None:
    env = {"CONVEYOR_WORKER__HEARTBEAT_FILE": str(tmp_path / "heartbeat")}
    stale = run("worker", "--queue", "high", "--check", **env)
    assert stale.returncode == 1
    assert "no heartbeat" in stale.stderr
    (tmp_path / "heartbeat-high").touch()
    fresh = run("worker", "--queue", "high", "--check", **env)
    assert fresh.returncode == 0, fresh.stderr


def test_an_unknown_queue_is_refused() -> None:
    result = run("worker", "--queue", "urgent")
    assert result.returncode == 2
    assert "urgent" in result.stderr


ACME_TASKS = '''
from conveyor.core.catalog import JobContext, TaskArgs, task
from conveyor.core.queues import Queue


class DoubleArgs(TaskArgs):
    n: int


@task(name="acme.double", queue=Queue.DEFAULT, args=DoubleArgs)
def double(ctx: JobContext, args: DoubleArgs) -> dict[str, int]:
    """Twice n."""
    return {"twice": 2 * args.n}
'''


def acme(tmp_path: Path) -> Path:
    """A project directory holding the task module `acme.tasks` (not installed anywhere)."""
    (tmp_path / "acme").mkdir(parents=True)
    (tmp_path / "acme" / "tasks.py").write_text(ACME_TASKS)
    return tmp_path


@pytest.mark.parametrize("role", [["api"], ["worker", "--queue", "low"], ["beat"], ["dev"]])
def test_a_task_module_error_is_one_line_naming_it_and_the_search_path(
    tmp_path: Path, role: list[str]
) -> None:
    project = acme(tmp_path)
    result = subprocess.run(
        [CONVEYOR, *role], capture_output=True, text=True, timeout=60, cwd=project,
        env={"PATH": str(Path(sys.executable).parent), "CONVEYOR_TASK_MODULES": "acme.tazks"},
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "error: task module 'acme.tazks' not found; searched " in result.stderr
    assert f"{project} (current directory)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = run("api", CONVEYOR_TASK_MODULES="acme/tasks.py")
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: invalid configuration: CONVEYOR_TASK_MODULES: ")
    workers = run("api", CONVEYOR_API__WORKERS="zero")
    assert workers.returncode == 78
    assert "CONVEYOR_API__WORKERS: " in workers.stderr
    assert "Traceback" not in workers.stderr


def test_api_and_worker_find_task_modules_in_the_current_directory(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    project = acme(tmp_path / "project")
    port = free_port()
    env = service_env(
        redis_server.url(fresh_db(redis_server)),
        CONVEYOR_TASK_MODULES="acme.tasks",  # a plain name: no JSON brackets needed
        CONVEYOR_API__BIND=f"127.0.0.1:{port}",
    )
    env["PYTHONPATH"] = ""  # found because they run from the project directory alone
    logs = {name: (tmp_path / f"{name}.log").open("w+") for name in ("api", "worker")}
    argv = {"api": [CONVEYOR, "api"], "worker": [CONVEYOR, "worker", "--queue", "default"]}
    processes = {
        name: subprocess.Popen(
            argv[name],
            cwd=project,
            env=env,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name in argv
    }
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            for name, process in processes.items():
                assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, "the API")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
            job = api.post("/v1/jobs", json={"task": "acme.double", "args": {"n": 21}}).json()
            done = wait_for_job(api, job["id"], TERMINAL, timeout=60)
        assert (done["state"], done["result"]) == ("succeeded", {"twice": 42}), done
        api_log = (tmp_path / "api.log").read_text()
        # `conveyor api` says whether authentication is on and how many keys it loaded.
        assert f"authentication ON, 4 keys loaded from {KEYS_FILE}" in api_log
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in logs.values():
            log.close()


def test_keys_create_writes_a_whole_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "# Conveyor API keys\ntenants:\n  team-a: {rate_per_second: 5, burst: 10}\n"
    )
    created = []
    for key_id in ("team-a-1", "team-a-2"):
        result = subprocess.run(
            [CONVEYOR, "keys", "create", "--tenant", "team-a", "--scope", "jobs:read",
             "--scope", "jobs:write", "--id", key_id, "--file", str(keys_file)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={"PATH": str(Path(sys.executable).parent)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        key = re.search(r"(cvk_\S+)", result.stderr)
        assert key, result.stderr
        created.append(key.group(1))
    assert f"added 'team-a-2' to {keys_file} (2 keys)" in result.stderr
    text = keys_file.read_text()
    assert text.startswith("# Conveyor API keys\n"), text  # comments at the top are kept
    assert parse_keys(text).tenants["team-a"].burst == 10  # and so are tenants' limits
    document = parse_keys(keys_file.read_text())
    assert [entry.id for entry in document.keys] == ["team-a-1", "team-a-2"]
    assert [entry.sha256 for entry in document.keys] == [hash_key(k) for k in created]
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    # Without --file: the entry alone, as before (for the chart's `config.auth.keys`).
    printed = run("keys", "create", "--tenant", "team-b", "--scope", "admin")
    assert printed.returncode == 0
    assert printed.stdout.startswith("- id: team-b-")
    assert parse_keys("keys:\n" + printed.stdout).keys[0].tenant == "team-b"
    # The same id twice is refused, and the file is left as it was.
    again = subprocess.run(
        [CONVEYOR, "keys", "create", "--tenant", "team-a", "--scope", "admin", "--id", "team-a-1",
         "--file", str(keys_file)],
        capture_output=True, text=True, timeout=60, env={"PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert again.returncode == 1
    assert "the same key id is listed twice" in again.stderr
    assert len(parse_keys(keys_file.read_text()).keys) == 2


def test_keys_files_are_not_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "keys.yaml", "sub/keys.yaml", "tests/support/keys.yaml"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert ignored.stdout.split() == ["keys.yaml", "sub/keys.yaml"]


@pytest.mark.parametrize("role", [["api"], ["worker", "--queue", "default"]])
@pytest.mark.parametrize("secret", [None, "change-me"], ids=["unset", "short"])
def test_api_and_workers_refuse_to_sign_with_a_missing_or_weak_secret(
    role: list[str], secret: str | None
) -> None:
    env = {"CONVEYOR_AUTH__DISABLED": "true", "CONVEYOR_REDIS_URL": "redis://127.0.0.1:1/0"}
    if secret is not None:
        env["CONVEYOR_WEBHOOK__SIGNING_SECRET"] = secret
    result = run(*role, "--quiet", **env)
    assert result.returncode == 78, result.stderr
    assert "refusing to start" in result.stderr
    assert "CONVEYOR_WEBHOOK__SIGNING_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_local_receiver_refuses_an_empty_secret_file(tmp_path: Path) -> None:
    # Found by review: an empty file verified every delivery against "" (forgeable).
    empty = tmp_path / "secret"
    empty.write_text("\n")
    result = run("webhooks", "listen", "--secret-file", str(empty), "--port", "1")
    assert result.returncode == 78, result.stderr
    assert "SIGNING_SECRET is not set" in result.stderr or "characters" in result.stderr
