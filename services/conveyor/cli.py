"""The `conveyor` command: one entry point for every role."""

import contextlib
import faulthandler
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from conveyor.core.apikeys import Scope
from conveyor.core.catalog import TaskModuleError, catalog_for
from conveyor.core.durability import UnsafeRedisError, check_durability
from conveyor.core.logs import configure_logging
from conveyor.core.queues import Queue
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings, secret_problem

app = typer.Typer(
    help="Conveyor job platform.", no_args_is_help=True, pretty_exceptions_enable=False
)

EX_CONFIG = 78
Quiet = Annotated[
    bool, typer.Option("--quiet", help="No start-up banner or summary (`conveyor dev` uses it).")
]


def _startup(settings: Settings, *, signs_webhooks: bool = False) -> None:
    """Logging, then the checks that may refuse to start: webhooks without a signing secret
    (`signs_webhooks`: the API accepts and the workers send them), the Redis durability.
    """
    configure_logging(settings)
    problem = settings.webhook.problem() if signs_webhooks else None
    if problem is not None:
        typer.echo(f"refusing to start: {problem}", err=True)
        raise typer.Exit(EX_CONFIG)
    client = sync_client(settings)
    try:
        check_durability(client, settings.redis_durability_check)
    except UnsafeRedisError as exc:
        typer.echo(f"refusing to start: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from exc
    finally:
        client.close()


def _stack_dumps_on_sigusr2() -> None:
    """`kill -USR2` prints every thread's stack to stderr, from this process and from each
    prefork child it forks (they inherit the handler): what a hung worker or beat is doing,
    even when its main thread holds the GIL or waits in C. Not for the API, whose gunicorn
    master re-executes itself on SIGUSR2. Signal one process at a time: dumps written at once
    interleave in the shared stderr.
    """
    faulthandler.register(signal.SIGUSR2, all_threads=True)


def _auth_line(settings: Settings, keys: int) -> str:
    auth = settings.auth
    if auth.disabled:
        return "authentication OFF (CONVEYOR_AUTH__DISABLED=true): local development only"
    source = auth.keys_file or "CONVEYOR_AUTH__KEYS"
    return f"authentication ON, {keys} key{'' if keys == 1 else 's'} loaded from {source}"


def _multiprocess_metrics(settings: Settings, role: str) -> None:
    """Metrics of several processes (prefork, gunicorn) in a fresh directory of this role."""
    from conveyor.telemetry.prometheus import enable_multiprocess

    enable_multiprocess(settings.metrics.multiprocess_dir / f"{role}-{os.getpid()}")


@app.command()
def api(quiet: Quiet = False) -> None:
    """Serve the HTTP API (gunicorn with uvicorn workers)."""
    from conveyor.api.auth import KeySource, MissingKeysError
    from conveyor.api.server import ApiServer

    settings = Settings()
    catalog_for(settings)  # every API process loads it: fail once, up front
    try:
        keys = KeySource(settings.auth)  # the same check every API process makes, up front
    except (MissingKeysError, OSError, ValueError) as exc:
        typer.echo(f"refusing to start: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from exc
    if not quiet:
        line = _auth_line(settings, len(keys.ring))
        typer.echo(f"conveyor api on http://{settings.api.bind}: {line}", err=True)
    _startup(settings, signs_webhooks=True)
    _multiprocess_metrics(settings, "api")
    ApiServer(settings).run()


@app.command()
def worker(
    queue: Annotated[Queue, typer.Option("--queue", "-q", help="The tier this worker serves.")],
    concurrency: Annotated[
        int | None, typer.Option(help="Child processes (default: CONVEYOR_WORKER__CONCURRENCY).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Liveness probe: exit 1 unless this tier's consumer heartbeat is fresh."
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Run a Celery worker for one queue tier (or, with --check, probe its liveness)."""
    settings = Settings()
    if check:
        from conveyor.worker.liveness import check as check_heartbeat
        from conveyor.worker.liveness import heartbeat_path

        path = heartbeat_path(settings.worker.heartbeat_file, str(queue))
        ok, reason = check_heartbeat(path, settings.worker.heartbeat_max_age_seconds)
        typer.echo(reason, err=not ok)
        raise typer.Exit(0 if ok else 1)

    from conveyor.worker.app import create_celery

    catalog_for(settings)  # a task module's error before anything else
    _startup(settings, signs_webhooks=True)
    _multiprocess_metrics(settings, f"worker-{queue}")
    celery = create_celery(settings)
    _stack_dumps_on_sigusr2()
    if quiet:
        import warnings

        from celery.exceptions import SecurityWarning

        # Running as root (containers, sandboxes) is what this warning is about: said once
        # by the platform's docs, not by every worker at every start.
        warnings.filterwarnings("ignore", category=SecurityWarning)
    node = celery.Worker(
        quiet=quiet,
        queues=[str(queue)],
        concurrency=concurrency or settings.worker.concurrency,
        # Unique per process: several workers of one tier may share a host (dev, tests).
        hostname=f"{queue}.{os.getpid()}@{socket.gethostname()}",
        loglevel=settings.log_level.upper(),
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
    )
    node.start()
    raise typer.Exit(node.exitcode or 0)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def beat(quiet: Quiet = False) -> None:
    """Run the periodic-job scheduler (one leader; extra replicas stand by)."""
    from conveyor.beat.app import create_beat
    from conveyor.beat.scheduler import ConveyorScheduler
    from conveyor.telemetry.prometheus import serve

    settings = Settings()
    catalog_for(settings)  # a task module's error before anything else
    _startup(settings)
    celery, services = create_beat(settings)
    # Served before the lock is taken, so a standby reports conveyor_beat_leader 0.
    serve(settings.metrics.beat_port, services.registry)
    # As PID 1 in a container a signal without a handler is ignored: exit cleanly instead,
    # which releases the leader lock at once for a standby to take.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    _stack_dumps_on_sigusr2()
    celery.Beat(
        scheduler=ConveyorScheduler,  # type: ignore[arg-type]  # a class is accepted, stubs say str
        max_interval=settings.beat.max_interval_seconds,  # type: ignore[arg-type]
        loglevel=settings.log_level.upper(),
        quiet=quiet,
    ).run()


@app.command()
def exporter() -> None:
    """Serve broker and job-store metrics read from Redis (run one replica)."""
    from conveyor.exporter.server import run_exporter

    settings = Settings()
    _startup(settings)
    run_exporter(settings)


@app.command()
def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where the local Redis keeps its AOF and data.")
    ] = Path(".conveyor"),
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    appendfsync: Annotated[
        str, typer.Option(help="AOF fsync policy of the local Redis: everysec or always.")
    ] = "everysec",
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Relay every process's log (default: warnings and errors)."
        ),
    ] = False,
) -> None:
    """Run everything locally: Redis, the API, one worker per tier, beat and the exporter."""
    from conveyor.dev import run_dev

    if appendfsync not in ("everysec", "always"):
        raise typer.BadParameter("everysec or always", param_hint="--appendfsync")
    settings = Settings()
    catalog_for(settings)  # a task module's error, once, before anything starts
    code = run_dev(
        settings, data_dir=data_dir, api_port=port, appendfsync=appendfsync, verbose=verbose
    )
    raise typer.Exit(code)


keys_app = typer.Typer(help="API keys: create them, hash them.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for.")],
    scope: Annotated[
        list[Scope], typer.Option("--scope", "-s", help="jobs:read, jobs:write or admin.")
    ],
    key_id: Annotated[
        str | None, typer.Option("--id", help="Name in logs (default: tenant and date).")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Keys file to add the key to (created if missing); the API re-reads it.",
        ),
    ] = None,
) -> None:
    """Create a random key (printed once, on stderr) and add its hash to a keys file
    (--file, created if missing), or print its entry on stdout.
    """
    import datetime
    import re

    import yaml

    from conveyor.core.apikeys import (
        SYSTEM_TENANT,
        TENANT_PATTERN,
        KeyEntry,
        generate_key,
        hash_key,
    )

    if not re.match(TENANT_PATTERN, tenant) or tenant == SYSTEM_TENANT:
        raise typer.BadParameter(
            f"{tenant!r} is not {TENANT_PATTERN}, or is the reserved {SYSTEM_TENANT!r}",
            param_hint="--tenant",
        )
    key = generate_key()
    entry = KeyEntry(
        id=key_id or f"{tenant}-{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}",
        tenant=tenant,
        scopes=frozenset(scope),
        sha256=hash_key(key),
    )
    if file is None:
        # The entry alone (a one-item list): for `config.auth.keys` or under `keys:`.
        typer.echo(f"key (store it now; it is not kept anywhere): {key}", err=True)
        typer.echo(yaml.safe_dump([_entry_document(entry)], sort_keys=False), nl=False)
        return
    try:
        header, document = _read_keys_file(file)
        text = header + _keys_file_text(document, entry)
        _write_private(file, text)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key (store it now; it is not kept anywhere): {key}", err=True)
    count = len(document.get("keys") or []) + 1
    typer.echo(f"added {entry.id!r} to {file} ({count} key{'' if count == 1 else 's'})", err=True)


def _read_keys_file(path: Path) -> tuple[str, dict[str, Any]]:
    """The leading comment lines of an existing keys file, and its document (validated: a
    file that does not parse is never rewritten).
    """
    import yaml

    from conveyor.core.apikeys import parse_keys

    if not path.exists():
        return "", {}
    text = path.read_text()
    parse_keys(text)
    header = ""
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        header += line
    return header, yaml.safe_load(text) or {}


def _keys_file_text(document: dict[str, Any], entry: object) -> str:
    """`document` (keys and tenants) with `entry` added; validated before it is written."""
    import yaml

    from conveyor.core.apikeys import parse_keys

    keys = [*(document.get("keys") or []), _entry_document(entry)]
    text = yaml.safe_dump({**document, "keys": keys}, sort_keys=False)
    parse_keys(text)  # e.g. an --id the file already has
    return text


def _entry_document(entry: object) -> dict[str, object]:
    from conveyor.core.apikeys import KeyEntry

    assert isinstance(entry, KeyEntry)
    return {**entry.model_dump(mode="json"), "scopes": sorted(s.value for s in entry.scopes)}


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically (the API sees a new file, never half of one), mode 0600."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    temporary.replace(path)


@keys_app.command("webhook-secret")
def keys_webhook_secret(
    tenant: Annotated[str, typer.Option(help="Tenant whose receivers verify the signatures.")],
) -> None:
    """Print the key a tenant's receivers verify Conveyor-Signature with (derived from
    CONVEYOR_WEBHOOK__SIGNING_SECRET: each tenant's webhooks are signed with its own key).
    """
    from conveyor.core.signing import tenant_secret

    typer.echo(tenant_secret(_signing_secret(Settings(), None), tenant))


def _signing_secret(settings: Settings, secret_file: Path | None) -> str:
    """The deployment's signing secret: from `secret_file` (what `conveyor dev` writes), or
    CONVEYOR_WEBHOOK__SIGNING_SECRET; exits 78 when there is none to use.
    """
    try:
        if secret_file is None:
            return settings.webhook.secret()
        secret = secret_file.read_text().strip()
        problem = secret_problem(secret)
        if problem is not None:
            raise ValueError(f"{secret_file}: {problem}")
        return secret
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from None


@keys_app.command("hash")
def keys_hash() -> None:
    """Print the sha256 of a key read from standard input (to list an existing key)."""
    import sys

    from conveyor.core.apikeys import hash_key

    typer.echo(hash_key(sys.stdin.readline().strip()))


webhooks_app = typer.Typer(help="Webhooks: a receiver to try them locally.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("listen")
def webhooks_listen(
    port: Annotated[int, typer.Option(help="Port to listen on (127.0.0.1).")] = 9000,
    count: Annotated[
        int | None, typer.Option(min=1, help="Exit after this many deliveries (default: never).")
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the deployment's signing secret (`conveyor dev` writes "
            ".conveyor/webhook-signing-secret); default: CONVEYOR_WEBHOOK__SIGNING_SECRET."
        ),
    ] = None,
) -> None:
    """Receive webhooks and completion callbacks on http://127.0.0.1:PORT/ and print each one
    with its signature checked, answering 204.
    """
    from conveyor.client.receiver import Delivery, Receiver

    secret = _signing_secret(Settings(), secret_file)

    def report(delivery: Delivery) -> None:
        typer.echo(delivery.summary())

    try:
        receiver = Receiver(secret, report, port=port)
    except OSError as exc:
        typer.echo(f"error: cannot listen on 127.0.0.1:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"listening on {receiver.url}/ for webhooks", err=True)
    signal.signal(signal.SIGTERM, lambda *_: receiver.stop())
    with contextlib.suppress(KeyboardInterrupt):
        receiver.serve(count)


def _client_commands() -> None:
    from conveyor.client.cli import flow_app, jobs_app, tasks
    from conveyor.client.schedule_cli import schedules_app
    from conveyor.client.workflow_cli import workflows_app

    app.add_typer(jobs_app, name="jobs")
    app.add_typer(workflows_app, name="workflows")
    app.add_typer(schedules_app, name="schedules")
    app.add_typer(flow_app, name="flow")
    app.command("tasks")(tasks)


_client_commands()


def main() -> None:
    """Console-script entry point.

    Task modules are imported from the current directory too, as `python -m` would. A
    configuration error (a CONVEYOR_* value, a task module) is one line and exit code 78.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        app()
    except TaskModuleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(EX_CONFIG) from None
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"error: invalid configuration: {_config_problem(exc)}", err=True)
        raise SystemExit(EX_CONFIG) from None


def _config_problem(exc: ValidationError | SettingsError) -> str:
    """One line naming each CONVEYOR_* variable at fault and what is wrong with it."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for error in exc.errors():
        names = [str(part) for part in error["loc"] if isinstance(part, str)]
        variable = "CONVEYOR_" + "__".join(names).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{variable}: {message}")
    return "; ".join(problems)
