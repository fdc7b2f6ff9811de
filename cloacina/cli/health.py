"""``cloacina health``: is this component alive and connected? Exit 0 if so, 1 if not (for container probes).

::

    cloacina health                              # database, Redis, the poller's /healthz and a worker ping
    cloacina health --component worker           # e.g. a Kubernetes exec probe on a worker pod
    cloacina health --component poller --poller-url http://127.0.0.1:9090/healthz --json

Connections come from the environment (``CLOACINA_DATABASE_URL`` or ``--db``, ``CLOACINA_BROKER_URL``,
``CLOACINA_REDIS_URL``); the poller's ``/healthz`` defaults to ``http://127.0.0.1:$CLOACINA_METRICS_PORT/healthz``.
Every detail printed is password-free.
"""

from __future__ import annotations

import json
from typing import cast

import click

from cloacina.observability.logs import redact
from cloacina.services.health import COMPONENTS, Component, default_poller_url, run_health


@click.command("health")
@click.option(
    "--component",
    type=click.Choice(COMPONENTS),
    default="all",
    show_default=True,
    help="What to check besides the connections: the poller's loop, a worker's ping, or both.",
)
@click.option(
    "--poller-url",
    metavar="URL",
    default=None,
    help="The poller's health URL [default: http://127.0.0.1:$CLOACINA_METRICS_PORT/healthz].",
)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds each check may take (they run concurrently).")  # fmt: skip
@click.option("--db", "db_url", metavar="URL", default=None, help="Database [default: $CLOACINA_DATABASE_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def health(component: str, poller_url: str | None, timeout_s: float, db_url: str | None, as_json: bool) -> None:
    """Check the component's liveness and its connections; exit 0 if healthy, 1 if not."""
    from cloacina.deployment.settings import CloacinaSettings

    try:
        settings = CloacinaSettings(database_url=db_url) if db_url else CloacinaSettings()
    except Exception as exc:
        message = redact(" ".join(str(exc).split()))
        if as_json:
            click.echo(json.dumps({"component": component, "ok": False, "error": f"bad settings: {message}"}))
        else:
            click.echo(f"unhealthy: bad settings: {message}", err=True)
        raise click.exceptions.Exit(1) from None
    ok, report = run_health(
        cast(Component, component),  # click.Choice(COMPONENTS) admits nothing else
        settings,
        poller_url=poller_url or default_poller_url(settings),
        timeout_s=timeout_s,
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for name, part in report["checks"].items():
            click.echo(f"{'ok  ' if part['ok'] else 'FAIL'}  {name:<9} {part['detail']}")
        click.echo(f"{component}: {'healthy' if ok else 'unhealthy'}")
    raise click.exceptions.Exit(0 if ok else 1)
