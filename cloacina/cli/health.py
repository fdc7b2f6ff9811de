"""``cloacina health``: is this component ready (or alive)? Exit 0 if so, 1 if not (for container probes).

::

    cloacina health --component worker                 # GET http://127.0.0.1:$CLOACINA_METRICS_PORT/readyz
    cloacina health --component poller --probe live    # .../livez: the loop, never Redis or the database
    cloacina health --component web                    # http://127.0.0.1:$CLOACINA_WEB_PORT/readyz
    cloacina health                                    # database and Redis from here, for an operator
    cloacina health --component poller --url http://10.0.0.7:9100/readyz --json

A component is asked through its own endpoint, so the check costs one local HTTP request: no broker round trip,
no broadcast to every worker. ``--component all`` (the default) checks the connections itself (database schema
compatible, Redis ``PING``), plus ``--url`` when given. Connections come from the environment
(``CLOACINA_DATABASE_URL`` or ``--db``, ``CLOACINA_BROKER_URL``, ``CLOACINA_REDIS_URL``). Every detail printed is
password-free.
"""

from __future__ import annotations

import json
from typing import cast

import click

from cloacina.observability.logs import redact
from cloacina.services.health import COMPONENTS, PROBES, Component, Probe, run_health


@click.command("health")
@click.option(
    "--component",
    type=click.Choice(COMPONENTS),
    default="all",
    show_default=True,
    help="Ask this local process's probe endpoint, or (all) check the connections from here.",
)
@click.option(
    "--probe",
    type=click.Choice(PROBES),
    default="ready",
    show_default=True,
    help="ready: /readyz (dependencies and schema too); live: /livez (the process's own loop only).",
)
@click.option(
    "--url",
    "--poller-url",
    "url",
    metavar="URL",
    default=None,
    help="The endpoint to ask [default: http://127.0.0.1:$CLOACINA_METRICS_PORT/<probe>z].",
)
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds each check may take (they run concurrently).")  # fmt: skip
@click.option("--db", "db_url", metavar="URL", default=None, help="Database [default: $CLOACINA_DATABASE_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def health(component: str, probe: str, url: str | None, timeout_s: float, db_url: str | None, as_json: bool) -> None:
    """Check a component's probe, or the connections; exit 0 if healthy, 1 if not."""
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
        url=url,
        probe=cast(Probe, probe),
        timeout_s=timeout_s,
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for name, part in report["checks"].items():
            click.echo(f"{'ok  ' if part['ok'] else 'FAIL'}  {name:<9} {part['detail']}")
        click.echo(f"{component}: {'healthy' if ok else 'unhealthy'}")
    raise click.exceptions.Exit(0 if ok else 1)
