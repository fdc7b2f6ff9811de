"""``cloacina web``: the HTTP API and web console (:mod:`cloacina.web`).

::

    $ CLOACINA_WEB_AUTH=admin:$(openssl rand -hex 16) cloacina web --host 0.0.0.0 --port 8080 --db postgresql://...

Settings: ``--host``/``--port`` (or ``CLOACINA_WEB_HOST``/``_PORT``), ``--db`` (or ``CLOACINA_DATABASE_URL``),
``CLOACINA_BROKER_URL`` (needed to start runs), credentials ``CLOACINA_WEB_AUTH``, ``CLOACINA_WEB_TOKEN``,
``CLOACINA_WEB_READONLY_AUTH``, ``CLOACINA_LOG_FORMAT``/``CLOACINA_LOG_LEVEL`` (as for the other services; DEBUG
adds a line per request), and the rest of :class:`cloacina.web.settings.WebSettings`. A bad setting or a
non-loopback ``--host`` without any credential exits 2 with the reason.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from cloacina.cli.common import cli_errors, db_option
from cloacina.observability.logs import configure_logging
from cloacina.web.server import serve
from cloacina.web.settings import WebSettings


def _usage_error(message: str) -> click.exceptions.Exit:
    click.echo(f"Error: {message}", err=True)
    return click.exceptions.Exit(2)


@click.command("web")
@click.option("--host", envvar="CLOACINA_WEB_HOST", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", envvar="CLOACINA_WEB_PORT", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port."
)
@db_option
def web_command(host: str, port: int, db_url: str) -> None:
    """Serve the HTTP API (/api/v1) and the web console (/)."""
    try:
        settings = WebSettings(host=host, port=port, database_url=db_url)
    except ValidationError as exc:
        # Never print the input: it may be a credential.
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise _usage_error(f"invalid web settings: {problems}") from None
    try:
        settings.check_bind()
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    try:
        configure_logging(settings.log_format, settings.log_level)  # a service: its settings decide, as for workers
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    with cli_errors():
        serve(settings)
