"""Service commands: ``cloacina worker``, ``cloacina poller`` and ``cloacina flower``.

Configuration comes from ``CLOACINA_*`` environment variables (:class:`cloacina.deployment.settings.CloacinaSettings`);
the options here override the few that differ per process. Both services refuse to start on an unmigrated
database (run ``cloacina db upgrade``) and wait, with backoff, while the database or Redis is unreachable.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from cloacina.definitions.app_loader import load_app
from cloacina.deployment.settings import CloacinaSettings
from cloacina.errors import SchemaNotMigratedError

APP_ENV_VAR = "CLOACINA_APP"


def _settings(db_url: str | None, **overrides: Any) -> CloacinaSettings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if db_url:
        values["database_url"] = db_url
    try:
        return CloacinaSettings(**values)
    except Exception as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None


def _load(app_spec: str | None) -> None:
    if not app_spec:
        return
    try:
        load_app(app_spec)
    except Exception as exc:
        raise click.ClickException(str(exc)) from None


def _require_broker(settings: CloacinaSettings) -> None:
    if not settings.broker_url:
        raise click.ClickException("CLOACINA_BROKER_URL is not set (e.g. redis://localhost:6379/0)")


def _wait_for_database(settings: CloacinaSettings) -> None:
    from cloacina.deployment.wiring import Deployment

    deployment = Deployment(settings, role="tool")
    try:
        deployment.prepare_schema(migrate=False, stop=threading.Event())
    except SchemaNotMigratedError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        deployment.close()


app_option = click.option(
    "--app",
    "app_spec",
    envvar=APP_ENV_VAR,
    show_envvar=True,
    help="Module name or path to a .py file declaring the workflows and triggers.",
)
db_override = click.option("--db", "db_url", default=None, help="Overrides CLOACINA_DATABASE_URL.")


@click.command("worker", context_settings={"ignore_unknown_options": True})
@app_option
@db_override
@click.option("--concurrency", "-c", type=int, default=None, help="Worker processes (default: CPU count).")
@click.option("--queues", "-Q", default=None, help="Queues to consume (default: CLOACINA_QUEUE).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True)
@click.option("--hostname", "-n", default=None, help="Worker node name (default: cloacina@<host>-<pid>).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(
    app_spec: str | None,
    db_url: str | None,
    concurrency: int | None,
    queues: str | None,
    pool: str,
    hostname: str | None,
    celery_args: tuple[str, ...],
) -> None:
    """Run a Celery worker that executes workflow tasks (extra arguments go to ``celery worker``)."""
    from cloacina.observability.logs import configure_logging
    from cloacina.services.worker import run_worker, worker_argv

    settings = _settings(db_url)
    _require_broker(settings)
    configure_logging(settings.log_format, settings.service_log_level("worker"))
    _load(app_spec)
    _wait_for_database(settings)
    argv = worker_argv(
        settings, pool=pool, queues=queues, hostname=hostname, concurrency=concurrency, extra=celery_args
    )
    run_worker(settings, argv)


@click.command("poller")
@app_option
@db_override
def poller_command(app_spec: str | None, db_url: str | None) -> None:
    """Poll triggers and cron schedules and publish their runs to the workers (run 2+ replicas)."""
    from cloacina.observability.logs import configure_logging
    from cloacina.services.poller import PollerService

    settings = _settings(db_url)
    _require_broker(settings)
    configure_logging(settings.log_format, settings.service_log_level("poller"))
    _load(app_spec)
    service = PollerService(settings)

    def stop(signum: int, _frame: Any) -> None:
        service.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = None
    try:
        if settings.metrics_port is not None:  # /livez answers 503 until the loop ran: a startup probe waits
            from cloacina.observability.http import start_http_server

            service.probes.start()
            probes = service.probes
            server = start_http_server(settings.metrics_port, service.metrics.registry, probes.ready, live=probes.live)
        service.start()
        click.echo(f"poller {service.membership.poller_id} running", err=True)
        while not service.stop_event.wait(1.0):
            pass
    except SchemaNotMigratedError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        service.stop()
        service.probes.stop()
        if server is not None:
            server.stop()


@click.command("flower", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower_command(flower_args: tuple[str, ...]) -> None:
    """Run Flower against the configured broker (``CLOACINA_BROKER_URL``), e.g. ``cloacina flower --port 5555`` with
    ``FLOWER_BASIC_AUTH=user:password`` in the environment (kept out of the process's arguments). Flower's own
    options pass through, as ``--name value`` or ``--name=value``."""
    from cloacina.deployment.wiring import celery_options
    from cloacina.dispatch.celery_services import run_flower

    settings = _settings(None)
    _require_broker(settings)
    run_flower(celery_options(settings), flower_args)
