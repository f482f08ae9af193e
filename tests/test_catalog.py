"""The task catalogue: every task declares its queue and argument model where it is defined."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.core.catalog import (
    JobContext,
    RetryPolicy,
    TaskArgs,
    TaskCatalog,
    TaskModuleError,
    TaskSpec,
    UnknownTaskError,
    load_catalog,
    task,
)
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings
from conveyor.worker.app import create_celery
from tests.support.processes import REPO


class Args(TaskArgs):
    n: int = 0


def test_every_celery_task_is_a_catalogued_task_with_queue_and_args_model() -> None:
    settings = Settings(task_modules=["tests.support.tasks"])
    app = create_celery(settings)
    ours = {name: t for name, t in app.tasks.items() if not name.startswith("celery.")}
    assert set(ours) == set(load_catalog(settings.task_modules))
    for name, celery_task in ours.items():
        spec = getattr(celery_task, "spec", None)
        assert isinstance(spec, TaskSpec), f"{name} was not declared with @task"
        assert isinstance(spec.queue, Queue), name
        assert issubclass(spec.args_model, BaseModel), name
        assert spec.description, f"{name} needs a docstring: the catalogue shows it"


def test_the_decorator_refuses_a_task_without_queue_or_model() -> None:
    with pytest.raises(TypeError, match="queue"):
        task(name="x", queue="high", args=Args)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pydantic"):
        task(name="x", queue=Queue.HIGH, args=dict)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        task(name="x")  # type: ignore[call-arg]


def make_module(name: str, *fns: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for fn in fns:
        setattr(module, fn.__name__, fn)  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


def test_duplicate_task_names_are_refused() -> None:
    def one(ctx: JobContext, args: Args) -> None: ...

    def two(ctx: JobContext, args: Args) -> None: ...

    one.__module__ = two.__module__ = "dup_tasks"
    task(name="dup", queue=Queue.LOW, args=Args)(one)
    task(name="dup", queue=Queue.LOW, args=Args)(two)
    make_module("dup_tasks", one, two)
    with pytest.raises(ValueError, match="defined twice"):
        TaskCatalog.from_modules(["dup_tasks"])


def test_a_module_importing_anothers_task_does_not_register_it_again() -> None:
    from conveyor.tasks.demo import echo

    make_module("reexports", echo)
    assert len(TaskCatalog.from_modules(["reexports"])) == 0
    assert "demo.echo" in TaskCatalog.from_modules(["conveyor.tasks.demo", "reexports"])


def test_unknown_task_lookup() -> None:
    catalog = load_catalog([])
    assert "nope" not in catalog
    with pytest.raises(UnknownTaskError):
        catalog["nope"]


@pytest.mark.parametrize("retry_number", [1, 2, 5, 30])
def test_backoff_grows_exponentially_with_bounded_jitter(retry_number: int) -> None:
    policy = RetryPolicy(
        backoff_seconds=2, backoff_factor=3, max_backoff_seconds=100, jitter_min=0.5
    )
    base = min(100, 2 * 3 ** (retry_number - 1))
    assert policy.delay_for(retry_number, 0.0) == pytest.approx(base * 0.5)
    assert policy.delay_for(retry_number, 0.999999) == pytest.approx(base, rel=1e-5)


def test_the_api_and_task_modules_do_not_import_celery() -> None:
    code = (
        "import sys; import conveyor.api.app, conveyor.core.catalog;"
        "from conveyor.core.catalog import load_catalog; load_catalog([]);"
        "from conveyor.api.app import create_app; from conveyor.core.settings import Settings;"
        "create_app(Settings(auth={'disabled': True}));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_a_missing_task_module_is_named_with_the_search_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "acme_first_hour"
    package.mkdir()
    (package / "tasks.py").write_text("")
    (package / "broken.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskModuleError) as typo:
        TaskCatalog.from_modules(["acme_first_hour.tazks"])
    message = str(typo.value)
    assert message.startswith("task module 'acme_first_hour.tazks' not found; searched ")
    assert f"{tmp_path} (current directory)" in message
    assert "\n" not in message
    with pytest.raises(
        TaskModuleError, match=r"'nowhere_xyz\.tasks' not found \(no module 'nowhere_xyz'\)"
    ):
        TaskCatalog.from_modules(["nowhere_xyz.tasks"])
    with pytest.raises(
        TaskModuleError,
        match=r"'acme_first_hour\.broken' could not be imported: .*no_such_dependency_xyz",
    ):
        TaskCatalog.from_modules(["acme_first_hour.broken"])
    assert len(TaskCatalog.from_modules(["acme_first_hour.tasks"])) == 0
