"""The `conveyor` command: one entry point for every role."""

import os
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from conveyor.core.apikeys import Scope
from conveyor.core.durability import UnsafeRedisError, check_durability
from conveyor.core.logs import configure_logging
from conveyor.core.queues import Queue
from conveyor.core.redis import sync_client
from conveyor.core.settings import Settings

app = typer.Typer(
    help="Conveyor job platform.", no_args_is_help=True, pretty_exceptions_enable=False
)


def _startup(settings: Settings) -> None:
    """Logging, then the Redis durability check (which may refuse to start)."""
    configure_logging(settings)
    client = sync_client(settings)
    try:
        check_durability(client, settings.redis_durability_check)
    except UnsafeRedisError as exc:
        typer.echo(f"refusing to start: {exc}", err=True)
        raise typer.Exit(78) from exc  # EX_CONFIG
    finally:
        client.close()


def _multiprocess_metrics(settings: Settings, role: str) -> None:
    """Metrics of several processes (prefork, gunicorn) in a fresh directory of this role."""
    from conveyor.telemetry.prometheus import enable_multiprocess

    enable_multiprocess(settings.metrics.multiprocess_dir / f"{role}-{os.getpid()}")


@app.command()
def api() -> None:
    """Serve the HTTP API (gunicorn with uvicorn workers)."""
    from conveyor.api.auth import KeySource, MissingKeysError
    from conveyor.api.server import ApiServer

    settings = Settings()
    try:
        KeySource(settings.auth)  # the same check every API process makes, once, up front
    except (MissingKeysError, OSError, ValueError) as exc:
        typer.echo(f"refusing to start: {exc}", err=True)
        raise typer.Exit(78) from exc  # EX_CONFIG
    _startup(settings)
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

    _startup(settings)
    _multiprocess_metrics(settings, f"worker-{queue}")
    celery = create_celery(settings)
    node = celery.Worker(
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
def beat() -> None:
    """Run the periodic-job scheduler (one leader; extra replicas stand by)."""
    from conveyor.beat.app import create_beat
    from conveyor.beat.scheduler import ConveyorScheduler
    from conveyor.telemetry.prometheus import serve

    settings = Settings()
    _startup(settings)
    celery, services = create_beat(settings)
    # Served before the lock is taken, so a standby reports conveyor_beat_leader 0.
    serve(settings.metrics.beat_port, services.registry)
    # As PID 1 in a container a signal without a handler is ignored: exit cleanly instead,
    # which releases the leader lock at once for a standby to take.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    celery.Beat(
        scheduler=ConveyorScheduler,  # type: ignore[arg-type]  # a class is accepted, stubs say str
        max_interval=settings.beat.max_interval_seconds,  # type: ignore[arg-type]
        loglevel=settings.log_level.upper(),
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
) -> None:
    """Run everything locally: Redis, the API, one worker per tier and beat."""
    from conveyor.dev import run_dev

    if appendfsync not in ("everysec", "always"):
        raise typer.BadParameter("everysec or always", param_hint="--appendfsync")
    settings = Settings()
    raise typer.Exit(run_dev(settings, data_dir=data_dir, api_port=port, appendfsync=appendfsync))


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
) -> None:
    """Print a new random key (shown once) and the entry to add to the keys file."""
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
    document = {**entry.model_dump(mode="json"), "scopes": sorted(s.value for s in scope)}
    typer.echo(f"key (store it now; it is not kept anywhere): {key}", err=True)
    typer.echo(yaml.safe_dump([document], sort_keys=False), nl=False)


@keys_app.command("webhook-secret")
def keys_webhook_secret(
    tenant: Annotated[str, typer.Option(help="Tenant whose receivers verify the signatures.")],
) -> None:
    """Print the key a tenant's receivers verify Conveyor-Signature with (derived from
    CONVEYOR_WEBHOOK__SIGNING_SECRET: each tenant's webhooks are signed with its own key).
    """
    from conveyor.core.signing import tenant_secret

    settings = Settings()
    typer.echo(tenant_secret(settings.webhook.signing_secret.get_secret_value(), tenant))


@keys_app.command("hash")
def keys_hash() -> None:
    """Print the sha256 of a key read from standard input (to list an existing key)."""
    import sys

    from conveyor.core.apikeys import hash_key

    typer.echo(hash_key(sys.stdin.readline().strip()))


def _client_commands() -> None:
    from conveyor.client.cli import jobs_app, tasks

    app.add_typer(jobs_app, name="jobs")
    app.command("tasks")(tasks)


_client_commands()


def main() -> None:
    """Console-script entry point."""
    app()
