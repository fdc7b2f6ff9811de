"""The ``cloacina`` command line (subcommands are added by the modules that own them)."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="cloacina")
def main() -> None:
    """cloacina: event-triggered and cron-scheduled workflows."""


if __name__ == "__main__":
    main()
