"""Every code block of the README runs against a live platform, so the README cannot drift.

- `sh` blocks run with `bash -euo pipefail`, `python` blocks with this interpreter, in order,
  in one scratch directory, with the venv's `conveyor` on PATH. A comment line `#   text`
  (hash, three spaces) under a command is a sample of its output: it must appear in the
  block's output (spaces ignored; `…` matches anything).
- A block whose first line names a file (`# acme/tasks.py`, `# schedule.yaml`) is written
  there before the platform starts; the platform loads the task modules written so, and a
  schedule file is loaded as beat loads it.
- A block that cannot run is marked in its fence (```` ```sh no-run ````) and followed by an
  HTML comment giving the reason (`<!-- no-run: ... -->`). Any other block (another language,
  no language, or an unmarked one that fails) fails this test.

The README addresses the platform as `make dev` runs it (authentication off, the API on port
8000, a receiver on 9000); those ports are replaced by the test platform's.
"""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.beat.schedule import load_schedule
from conveyor.core.catalog import load_catalog
from conveyor.dev import dev_signing_secret
from tests.conftest import started_platform
from tests.support.processes import REPO, Platform, RedisServer, free_port

README = REPO / "README.md"
FENCE = re.compile(r"^```(?P<info>[^`]*)$")
FILE_LINE = re.compile(r"^# (?P<path>[\w./-]+\.(?:py|yaml))$")
SAMPLE = "#   "
BLOCK_TIMEOUT = 120
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int  # of the opening fence, 1-based
    language: str
    flags: frozenset[str]
    text: str
    reason: str | None  # the HTML comment after a no-run block

    @property
    def file(self) -> str | None:
        """The path a file block is written to."""
        first = self.text.splitlines()[0] if self.text else ""
        match = FILE_LINE.match(first)
        return match.group("path") if match else None

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.language or 'none'}"


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text."""
    lines = text.splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        words = opening.group("info").split()
        start = index
        index += 1
        body = []
        while index < len(lines) and lines[index] != "```":
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        following = lines[index] if index < len(lines) else ""
        reason = re.match(r"^<!-- no-run: (.+) -->$", following)
        found.append(
            Block(
                line=start + 1,
                language=words[0] if words else "",
                flags=frozenset(words[1:]),
                text="\n".join(body) + "\n",
                reason=reason.group(1) if reason else None,
            )
        )
    return found


ALL_BLOCKS = blocks(README.read_text())
RUNNABLE = [b for b in ALL_BLOCKS if "no-run" not in b.flags and b.file is None]


def samples(block: Block) -> list[str]:
    """The output samples of a block: `#   text` comment lines (indented ones too)."""
    lines = [line.lstrip() for line in block.text.splitlines()]
    return [line[len(SAMPLE) :] for line in lines if line.startswith(SAMPLE)]


def sample_pattern(sample: str) -> re.Pattern[str]:
    """`sample` as a pattern over output with every space removed; `…` matches anything."""
    parts = ["".join(part.split()) for part in sample.split("…")]
    return re.compile(".*?".join(re.escape(part) for part in parts), re.DOTALL)


def check_kind(block: Block) -> str | None:
    """Why the test cannot run `block`, or None when it can (or it is rightly marked)."""
    if "no-run" in block.flags:
        return None if block.reason else "a no-run block needs <!-- no-run: reason --> after it"
    if block.file is not None:
        return (
            None if block.language in ("python", "yaml") else "a file block must be python or yaml"
        )
    if block.language in ("sh", "python"):
        return None
    return f"no way to run a {block.language or 'language-less'} block: mark it no-run"


def test_every_block_is_runnable_or_marked() -> None:
    assert ALL_BLOCKS, "the README has code blocks"
    problems = {block.id: check_kind(block) for block in ALL_BLOCKS}
    assert not {k: v for k, v in problems.items() if v}
    assert {b.language for b in RUNNABLE} == {"sh", "python"}


def test_the_checker_refuses_what_it_cannot_run() -> None:
    unmarked = blocks("```text\nready\n```\n\n```\nx\n```\n\n```sh no-run\nmake dev\n```\n")
    assert [check_kind(b) is not None for b in unmarked] == [True, True, True]
    marked = blocks("```sh no-run\nmake dev\n```\n<!-- no-run: runs until Ctrl-C -->\n")
    assert [check_kind(b) for b in marked] == [None]
    assert sample_pattern('{"id": "…", "state": "queued", …}').search(
        '{"id":"6f0c","tenant":"default","state":"queued","args":{}}'
    )
    assert not sample_pattern('{"state": "queued"}').search('{"state":"running"}')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory blocks run in, with the README's file blocks written into it."""
    path = tmp_path_factory.mktemp("readme")
    for block in ALL_BLOCKS:
        if block.file is not None:
            target = path / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
    return path


def task_modules(workdir: Path) -> list[str]:
    return [
        ".".join(path.relative_to(workdir).with_suffix("").parts)
        for path in sorted(workdir.rglob("*.py"))
    ]


@pytest.fixture(scope="module")
def readme_platform(
    redis_server: RedisServer, module_logs: Path, workdir: Path
) -> Iterator[Platform]:
    """The platform as `make dev` runs it (no API keys, loopback webhooks allowed, a signing
    secret in .conveyor/ of the working directory), with the README's own task modules."""
    modules = ",".join(["tests.support.tasks", *task_modules(workdir)])
    platform = started_platform(
        redis_server,
        module_logs,
        CONVEYOR_AUTH__DISABLED="true",
        CONVEYOR_TASK_MODULES=modules,
        CONVEYOR_WEBHOOK__SIGNING_SECRET=dev_signing_secret(workdir / ".conveyor"),
        PYTHONPATH=os.pathsep.join([str(REPO), str(workdir)]),
    )
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return free_port()


def localized(text: str, platform: Platform, receiver_port: int) -> str:
    """The README's addresses (make dev's) replaced by the test platform's."""
    api = f"127.0.0.1:{platform.api_port}"
    for address in ("localhost:8000", "127.0.0.1:8000"):
        text = text.replace(address, api)
    text = text.replace("127.0.0.1:9000", f"127.0.0.1:{receiver_port}")
    return text.replace("--port 9000", f"--port {receiver_port}")


def block_env(platform: Platform) -> dict[str, str]:
    """A reader's shell: no CONVEYOR_* of the test run, `conveyor` on PATH, and the CLI's
    default URL (make dev's) pointed at the test platform."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["CONVEYOR_URL"] = platform.base_url
    env["COLUMNS"] = "100"
    return env


def test_file_blocks_are_valid(workdir: Path) -> None:
    files = [b.file for b in ALL_BLOCKS if b.file]
    assert "acme/tasks.py" in files
    catalog = load_catalog([])
    for block in ALL_BLOCKS:
        if block.file and block.file.endswith(".yaml"):
            assert load_schedule(workdir / block.file, catalog), block.id


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block_runs(
    block: Block, readme_platform: Platform, workdir: Path, receiver_port: int
) -> None:
    script = localized(block.text, readme_platform, receiver_port)
    argv = (
        ["bash", "-euo", "pipefail", "-c", script]
        if block.language == "sh"
        else [sys.executable, "-c", script]
    )
    result = subprocess.run(
        argv, cwd=workdir, env=block_env(readme_platform), capture_output=True, text=True,
        timeout=BLOCK_TIMEOUT, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{block.id} failed ({result.returncode}):\n{output[-4000:]}"
    flat = "".join(output.split())
    missing = [s for s in samples(block) if not sample_pattern(s).search(flat)]
    assert not missing, f"{block.id}: output samples not seen: {missing}\n{output[-4000:]}"
    assert "Traceback" not in output
