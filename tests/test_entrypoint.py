"""The image's entrypoint, `conveyor`, as the container runs it (a plain process)."""

import subprocess
import sys
from pathlib import Path

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
