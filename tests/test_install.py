"""`make dev` installs what running needs, with progress; `make test` adds the test, lint and
type-check tools; the Python version needed is checked and stated."""

import re
import subprocess
import tomllib
from pathlib import Path

from tests.support.processes import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TOOLS = ("pytest", "ruff", "mypy", "schemathesis", "openapi-python-client", "aiosmtpd", "flower")


def dry_run(target: str, tmp_path: Path) -> str:
    """The commands `make TARGET` would run from scratch (nothing is executed)."""
    result = subprocess.run(
        ["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_running_needs_no_test_or_lint_tool() -> None:
    runtime = names(PYPROJECT["project"]["dependencies"])
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert not runtime & set(TOOLS)
    assert set(TOOLS) <= names(dev)
    generator = next(r for r in dev if r.startswith("openapi-python-client"))
    assert ">=" in generator, "a lower bound"


def test_make_dev_installs_the_package_alone_with_progress(tmp_path: Path) -> None:
    commands = dry_run("dev", tmp_path)
    installs = [line for line in commands.splitlines() if " install " in line and "pip" in line]
    assert any(line.rstrip().endswith(" -e .") for line in installs), installs
    assert ".[dev]" not in commands
    assert "prometheus" not in commands
    assert not any(" -q " in line for line in installs), "pip shows its progress"
    assert "==> conveyor and what running it needs" in commands
    assert "conveyor dev" in commands


def test_make_test_adds_the_tools(tmp_path: Path) -> None:
    commands = dry_run("test", tmp_path)
    assert '-e ".[dev]"' in commands
    assert "promtool:prometheus" in commands
    assert "pytest" in commands


def test_an_old_python_is_refused_with_the_version_needed(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.9.18" && exit 0\nexit 1\n')
    old.chmod(0o755)
    result = subprocess.run(
        ["make", "dev", f"PYTHON={old}", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Conveyor needs Python 3.11 or newer" in result.stdout + result.stderr
    assert "Python 3.9.18" in result.stdout + result.stderr
    assert not (tmp_path / "venv").exists()


def test_the_readme_states_the_python_version_pyproject_requires() -> None:
    required = PYPROJECT["project"]["requires-python"]
    assert required == ">=3.11"
    assert "Python 3.11 or newer" in (REPO / "README.md").read_text()
