"""The ``cloacina`` command line: assembles the subcommands, each defined in its own ``cli_*`` module.

::

    cloacina [-v|-vv] db upgrade|current           schema migrations            (cloacina.cli.db)
    cloacina [-v|-vv] run APP [--for 30s]          run an app, watch it live    (cloacina.cli.run)
    cloacina [-v|-vv] triggers list|enable|disable|history                      (cloacina.cli.triggers)
    cloacina [-v|-vv] runs list|show                                            (cloacina.cli.runs)
    cloacina [-v|-vv] cron list                                                 (cloacina.cli.cron)
    cloacina [-v|-vv] pools set|list|delete        task pools (slots)           (cloacina.cli.pools)
    cloacina [-v|-vv] package build|validate|inspect|schema|deploy|list         (cloacina.cli.package)
    cloacina [-v|-vv] daemon [--watch DIR ...] [--db URL]   deploy packages    (cloacina.cli.daemon)
    cloacina worker|poller --app APP | flower [opts] | health                   (cloacina.cli.services, cli_health)
    cloacina web [--host 127.0.0.1] [--port 8080]   HTTP API and console         (cloacina.cli.web)

Every command takes ``--db URL`` (else ``$CLOACINA_DATABASE_URL``, else ``sqlite://cloacina.db``). Another
module adds its commands with ``main.add_command(...)`` here. ``python -m cloacina`` works too.
"""

from __future__ import annotations

import click

from cloacina.cli.common import configure_logging
from cloacina.cli.cron import cron_group
from cloacina.cli.daemon import daemon_command
from cloacina.cli.db import db_group
from cloacina.cli.health import health as health_command
from cloacina.cli.package import package as package_group
from cloacina.cli.pools import pools_group
from cloacina.cli.run import run_command
from cloacina.cli.runs import runs_group
from cloacina.cli.services import flower_command, poller_command, worker_command
from cloacina.cli.triggers import triggers_group
from cloacina.cli.web import web_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cloacina")
@click.option("-v", "--verbose", count=True, help="Log more on stderr: -v for INFO, -vv for DEBUG.")
def main(verbose: int) -> None:
    """cloacina: event-triggered and cron-scheduled workflows."""
    configure_logging(verbose)


main.add_command(db_group)
main.add_command(run_command)
main.add_command(triggers_group)
main.add_command(runs_group)
main.add_command(cron_group)
main.add_command(pools_group)
main.add_command(package_group)
main.add_command(daemon_command)
main.add_command(worker_command)
main.add_command(poller_command)
main.add_command(flower_command)
main.add_command(health_command)
main.add_command(web_command)


if __name__ == "__main__":
    main()
