"""The `conveyor` command: one entry point for every role."""

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from conveyor.core.logs import configure_logging
from conveyor.core.queues import Queue
from conveyor.core.settings import Settings

app = typer.Typer(
    help="Conveyor job platform.", no_args_is_help=True, pretty_exceptions_enable=False
)


@app.command()
def api() -> None:
    """Serve the HTTP API (gunicorn with uvicorn workers)."""
    from conveyor.api.server import ApiServer

    settings = Settings()
    configure_logging(settings)
    ApiServer(settings).run()


@app.command()
def worker(
    queue: Annotated[Queue, typer.Option("--queue", "-q", help="The tier this worker serves.")],
    concurrency: Annotated[
        int | None, typer.Option(help="Child processes (default: CONVEYOR_WORKER__CONCURRENCY).")
    ] = None,
) -> None:
    """Run a Celery worker for one queue tier."""
    from conveyor.worker.app import create_celery

    settings = Settings()
    configure_logging(settings)
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


@app.command()
def beat() -> None:
    """Run the periodic-job scheduler (one leader; extra replicas stand by)."""
    from conveyor.beat.app import create_beat

    settings = Settings()
    configure_logging(settings)
    celery, scheduler = create_beat(settings)
    celery.Beat(
        scheduler=scheduler,  # type: ignore[arg-type]  # a class is accepted, stubs say str
        max_interval=settings.beat.max_interval_seconds,  # type: ignore[arg-type]
        loglevel=settings.log_level.upper(),
    ).run()


@app.command()
def dev(
    data_dir: Annotated[
        Path, typer.Option(help="Where the local Redis keeps its AOF and data.")
    ] = Path(".conveyor"),
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
) -> None:
    """Run everything locally: Redis, the API, one worker per tier and beat."""
    from conveyor.dev import run_dev

    raise typer.Exit(run_dev(Settings(), data_dir=data_dir, api_port=port))


def main() -> None:
    """Console-script entry point."""
    app()
