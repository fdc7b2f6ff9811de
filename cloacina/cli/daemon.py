"""``cloacina daemon``: watch package folders, deploy what appears there, and run the triggers of those packages.

::

    $ cloacina daemon                                  # ~/.cloacina/packages/ and ~/.cloacina/cloacina.db
    $ cloacina daemon --watch ./packages --db postgresql://db/cloacina
    $ cp dist/data-ingest-1.0.0.cloacina ~/.cloacina/packages/     # deployed within a second
    $ rm ~/.cloacina/packages/data-ingest-1.0.0.cloacina           # its triggers stop (history kept)

Embedded (default): a ``DefaultRunner`` polls the package triggers and executes runs in this process. With
``CLOACINA_BROKER_URL`` set it runs a distributed poller instead (:class:`~cloacina.services.poller.
PollerService`) and runs go to Celery workers, which fetch the packages from the database registry.
SIGINT or SIGTERM stops it after the pass in progress. See :mod:`cloacina.services.reconciler`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloacina.cli.common import cli_errors

if TYPE_CHECKING:
    from cloacina.packaging.loader import PackageLoader
    from cloacina.scheduling.trigger_poller import TriggerScheduler
    from cloacina.store.cron import CronStore
    from cloacina.store.triggers import TriggerStore

DATABASE_ENV_VAR = "CLOACINA_DATABASE_URL"


def home_dir() -> Path:
    return Path.home() / ".cloacina"


def default_watch_dir() -> Path:
    """``~/.cloacina/packages``: where ``cloacina package deploy`` copies archives and the daemon looks."""
    return home_dir() / "packages"


def default_database_url() -> str:
    """``sqlite:///<home>/.cloacina/cloacina.db``: the daemon's registry and run store unless told otherwise."""
    return f"sqlite:///{home_dir() / 'cloacina.db'}"


def daemon_db_option(func: Any) -> Any:
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        envvar=DATABASE_ENV_VAR,
        show_envvar=True,
        default=None,
        help="Database (registry and runs). Default: sqlite:///~/.cloacina/cloacina.db.",
    )(func)


def prepare_sqlite_dir(db_url: str) -> None:
    """Create the folder of a file-backed SQLite database (the default lives in ~/.cloacina)."""
    from cloacina.cli.common import sqlite_path
    from cloacina.store.urls import parse_database_url

    path = sqlite_path(parse_database_url(db_url))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _engine(db_url: str) -> Iterator[tuple[PackageLoader, TriggerScheduler | None, TriggerStore, CronStore]]:
    """(loader, scheduler, trigger_store, cron_store) of an embedded runner, or of a distributed poller with a
    broker. The cron store is the one the process's cron scheduler listens on, so a package's cron schedule
    registered through it is fired from its first due time on."""
    from cloacina.deployment.settings import CloacinaSettings
    from cloacina.deployment.wiring import Deployment
    from cloacina.runner.default_runner import DefaultRunner
    from cloacina.services.poller import PollerService

    settings = CloacinaSettings(database_url=db_url)
    if not settings.broker_url:
        runner = DefaultRunner(db_url)
        try:
            yield runner.packages, runner.trigger_scheduler, runner.triggers, runner.deployment.cron
        finally:
            runner.shutdown()
        return
    migrator = Deployment(settings, role="tool")
    try:
        migrator.prepare_schema(migrate=True)  # as the embedded runner does; the poller refuses an unmigrated db
    finally:
        migrator.close()
    service = PollerService(settings)
    service.start()
    try:  # the poller publishes (and republishes) package runs; its loader resolves them
        yield service.deployment.packages, service.triggers, service.deployment.triggers, service.deployment.cron
    finally:
        service.stop()


@click.command("daemon")
@click.option(
    "--watch",
    "watch_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of .cloacina archives to deploy (repeatable). Default: ~/.cloacina/packages.",
)
@daemon_db_option
@click.option("--verify-timeout", "verify_timeout_s", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds allowed for importing a package in a child process before it is deployed.")  # fmt: skip
@click.option("--rescan-interval", "rescan_interval_s", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Full rescan of the folders and the registry at least this often.")  # fmt: skip
def daemon_command(
    watch_dirs: tuple[Path, ...], db_url: str | None, verify_timeout_s: float, rescan_interval_s: float
) -> None:
    """Deploy the packages in the watched folders and run their triggers until SIGINT or SIGTERM."""
    from cloacina.services.reconciler import Reconciler
    from cloacina.store.packages import PackageStore

    dirs = [d.expanduser() for d in watch_dirs] or [default_watch_dir()]
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    db_url = db_url or default_database_url()
    deploy_log = logging.getLogger("cloacina.reconciler")
    if deploy_log.getEffectiveLevel() > logging.INFO:  # deployments and rejections are what an operator watches
        deploy_log.setLevel(logging.INFO)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with cli_errors():
        prepare_sqlite_dir(db_url)
        with _engine(db_url) as (loader, scheduler, trigger_store, cron_store):
            reconciler = Reconciler(
                loader.store or PackageStore(trigger_store.db),
                loader,
                dirs,
                scheduler=scheduler,
                trigger_store=trigger_store,
                cron_store=cron_store,
                verify_timeout_s=verify_timeout_s,
            )
            mode = "distributed (Celery)" if os.environ.get("CLOACINA_BROKER_URL") else "embedded"
            click.echo(f"cloacina daemon watching {', '.join(map(str, dirs))} ({mode})", err=True)
            reconciler.run(stop, rescan_interval_s=rescan_interval_s)
    click.echo("cloacina daemon stopped", err=True)
