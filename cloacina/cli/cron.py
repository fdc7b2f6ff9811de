"""``cloacina cron``: list the cron schedules stored in the database (registered by apps' ``setup(runner)``).

Schedule ids are UUID strings, as the runner's cron API returns them.

::

    $ cloacina cron list --json
"""

from __future__ import annotations

from typing import Any

import click

from cloacina.cli.common import console, db_option, emit_json, fmt_time, json_option, management_runner, new_table
from cloacina.runner.cron_api import schedule_dicts


@click.group("cron")
def cron_group() -> None:
    """Cron schedules."""


@cron_group.command("list")
@db_option
@json_option
@click.option("--enabled-only", is_flag=True, help="Only schedules that are enabled.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
def cron_list(db_url: str, as_json: bool, enabled_only: bool, limit: int) -> None:
    """List cron schedules with their next and last run times."""
    with management_runner(db_url) as runner:  # reads the store: the runner itself fires no schedule
        schedules: list[dict[str, Any]] = schedule_dicts(runner.deployment.cron, enabled_only, limit, 0)
    if as_json:
        emit_json(schedules)
        return
    if not schedules:
        click.echo("No cron schedules" + (" are enabled." if enabled_only else " yet."))
        return
    table = new_table("Cron schedules")
    table.add_column("id", no_wrap=True)
    table.add_column("workflow")
    table.add_column("expression", no_wrap=True)
    table.add_column("timezone")
    table.add_column("enabled")
    table.add_column("next run")
    table.add_column("last run")
    for s in schedules:
        table.add_row(
            str(s.get("id", "-")),
            str(s.get("workflow_name", "-")) + (f" ({s['instance_name']})" if s.get("instance_name") else ""),
            str(s.get("cron_expression", "-")),
            str(s.get("timezone") or "UTC"),
            "[green]yes[/green]" if s.get("enabled") else "[red]no[/red]",
            fmt_time(s.get("next_run_at")),
            fmt_time(s.get("last_run_at")),
        )
    console().print(table)
