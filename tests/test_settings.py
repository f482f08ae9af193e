"""Settings come from CONVEYOR_* variables only, nested with `__`."""

import re

import pytest

from conveyor.core.settings import LogFormat, Settings, SmtpSecurity
from tests.support.processes import REPO


def test_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://r:6380/3")
    monkeypatch.setenv("CONVEYOR_API__WORKERS", "7")
    monkeypatch.setenv("CONVEYOR_WORKER__CONCURRENCY", "9")
    monkeypatch.setenv("CONVEYOR_SMTP__SECURITY", "starttls")
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", '["team.tasks", "other.tasks"]')
    monkeypatch.setenv("CONVEYOR_LOG_FORMAT", "json")
    monkeypatch.setenv("CONVEYOR_JOBS__RETENTION_SECONDS", "3600")
    settings = Settings()
    assert settings.redis_url.get_secret_value() == "redis://r:6380/3"
    assert settings.api.workers == 7
    assert settings.worker.concurrency == 9
    assert settings.smtp.security is SmtpSecurity.STARTTLS
    assert settings.task_modules == ["team.tasks", "other.tasks"]
    assert settings.log_format is LogFormat.JSON
    assert settings.jobs.retention_seconds == 3600
    assert "r:6380" not in repr(settings), "the Redis URL may hold a password"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API__WORKERS", "0")
    with pytest.raises(ValueError, match="workers"):
        Settings()


def test_only_settings_reads_the_environment() -> None:
    uses = []
    for path in sorted((REPO / "services").rglob("*.py")):
        for line in path.read_text().splitlines():
            if re.search(r"os\.environ|getenv", line):
                uses.append((path.relative_to(REPO).as_posix(), line.strip()))
    # dev.py hands its environment down to the processes it supervises; the metrics module
    # tells prometheus-client its multiprocess directory (a write, from Settings).
    assert uses == [
        ("services/conveyor/dev.py", "env={**os.environ, **child.env},"),
        ("services/conveyor/telemetry/prometheus.py", "os.environ[_ENV] = str(directory)"),
    ]


def test_redis_password_from_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "rediss://redis.example:6380/2")
    monkeypatch.setenv("CONVEYOR_REDIS_PASSWORD", "p@ss/word")
    assert Settings().redis_dsn() == "rediss://:p%40ss%2Fword@redis.example:6380/2"
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://:inline@redis:6379/0")
    assert Settings().redis_dsn() == "redis://:inline@redis:6379/0", "the URL's own wins"
    monkeypatch.delenv("CONVEYOR_REDIS_PASSWORD")
    assert Settings().redis_dsn() == "redis://:inline@redis:6379/0"


@pytest.mark.parametrize(
    ("raw", "modules"),
    [
        ("acme.tasks", ["acme.tasks"]),
        (" acme.tasks , acme.reports ,", ["acme.tasks", "acme.reports"]),
        ('["acme.tasks", "acme.reports"]', ["acme.tasks", "acme.reports"]),
        ("", []),
    ],
)
def test_task_modules_are_a_comma_separated_list_or_json(
    monkeypatch: pytest.MonkeyPatch, raw: str, modules: list[str]
) -> None:
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", raw)
    assert Settings().task_modules == modules


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("acme/tasks.py", "'acme/tasks.py' is not a dotted module name"),
        ('["acme.tasks"', "not a JSON array of module names"),
    ],
)
def test_a_wrong_task_modules_value_says_why(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    monkeypatch.setenv("CONVEYOR_TASK_MODULES", raw)
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings()
