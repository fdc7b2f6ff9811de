"""``cloacina triggers``: list, enable, disable and inspect trigger schedules stored in the database.

These commands read and write the database only; they never poll a trigger. An enable/disable is picked up by
every running runner or poller at its next refresh (``trigger_base_poll_interval_ms``, 1 s by default).

::

    $ cloacina triggers list
    $ cloacina triggers disable file_watcher
    $ cloacina triggers history file_watcher --limit 5 --json
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape

from cloacina.cli.common import (
    console,
    db_option,
    duration_ms,
    emit_json,
    fmt_bool,
    fmt_duration_ms,
    fmt_time,
    json_option,
    management_runner,
    new_table,
    shorten,
    styled_status,
)
from cloacina.definitions.duration import format_duration_ms
from cloacina.runner.default_runner import DefaultRunner


@click.group("triggers")
def triggers_group() -> None:
    """Trigger schedules: list, enable, disable, history."""


def _require_trigger(runner: DefaultRunner, name: str) -> dict[str, Any]:
    schedule = runner.get_trigger_schedule(name)
    if schedule is None:
        known = ", ".join(s["trigger_name"] for s in runner.list_trigger_schedules(limit=50)) or "none"
        raise click.ClickException(f"unknown trigger {name!r}; known triggers: {known}")
    return schedule


@triggers_group.command("list")
@db_option
@json_option
@click.option("--enabled-only", is_flag=True, help="Only triggers that are enabled.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
def triggers_list(db_url: str, as_json: bool, enabled_only: bool, limit: int) -> None:
    """List trigger schedules with their poll statistics."""
    with management_runner(db_url) as runner:
        # cloaca's enabled_only lists every enabled trigger (oldest first, unpaged): --limit applies here.
        schedules = runner.list_trigger_schedules(enabled_only, limit, 0)[:limit]
    if as_json:
        emit_json(schedules)
        return
    if not schedules:
        click.echo("No enabled trigger schedules." if enabled_only else "No trigger schedules yet.")
        return
    table = new_table("Trigger schedules")
    table.add_column("trigger", no_wrap=True)
    table.add_column("workflow")
    table.add_column("every", justify="right")
    table.add_column("on")
    table.add_column("concurrent")
    table.add_column("last poll")
    table.add_column("last fire")
    for column in ("polls", "fires", "dedup", "errors"):
        table.add_column(column, justify="right")
    errors: list[str] = []
    for s in schedules:
        table.add_row(
            s["trigger_name"],
            s["workflow_name"],
            format_duration_ms(int(s["poll_interval_ms"])),
            "[green]yes[/green]" if s["enabled"] else "[red]no[/red]",
            fmt_bool(s["allow_concurrent"]),
            fmt_time(s.get("last_poll_at")),
            fmt_time(s.get("last_fire_at")),
            str(s.get("poll_count", 0)),
            str(s.get("fire_count", 0)),
            str(s.get("dedup_skip_count", 0)),
            f"[red]{s['error_count']}[/red]" if s.get("error_count") else "0",
        )
        if s.get("last_error"):
            when = fmt_time(s.get("last_error_at"))
            errors.append(f"  [bold]{escape(s['trigger_name'])}[/bold] ({when}): {shorten(s['last_error'], 300)}")
    out = console()
    out.print(table)
    if errors:
        out.print("Last poll errors:")
        for line in errors:
            out.print(line)


def _set_enabled(db_url: str, name: str, enabled: bool) -> None:
    word = "enabled" if enabled else "disabled"
    with management_runner(db_url) as runner:
        before = _require_trigger(runner, name)
        runner.set_trigger_enabled(name, enabled)
    if before["enabled"] == enabled:
        click.echo(f"Trigger {name!r} was already {word}.")
    else:
        click.echo(f"Trigger {name!r} {word}; running pollers pick this up within a few seconds.")


@triggers_group.command("enable")
@click.argument("name")
@db_option
def triggers_enable(name: str, db_url: str) -> None:
    """Resume polling trigger NAME."""
    _set_enabled(db_url, name, True)


@triggers_group.command("disable")
@click.argument("name")
@db_option
def triggers_disable(name: str, db_url: str) -> None:
    """Stop polling trigger NAME (its history is kept)."""
    _set_enabled(db_url, name, False)


@triggers_group.command("history")
@click.argument("name")
@db_option
@json_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Newest N fires.")
def triggers_history(name: str, db_url: str, as_json: bool, limit: int) -> None:
    """Runs started by trigger NAME, newest first."""
    with management_runner(db_url) as runner:
        _require_trigger(runner, name)
        history = runner.get_trigger_execution_history(name, limit=limit)
    if as_json:
        emit_json(history)
        return
    if not history:
        click.echo(f"Trigger {name!r} has not started any run yet.")
        return
    table = new_table(f"Runs fired by {name}")
    table.add_column("run id", no_wrap=True)
    table.add_column("status", min_width=9)
    table.add_column("context hash", no_wrap=True)
    table.add_column("started")
    table.add_column("took", justify="right")
    table.add_column("error", overflow="fold")
    for h in history:
        table.add_row(
            h["run_id"],
            styled_status(h.get("status")),
            (h.get("context_hash") or "")[:12],
            fmt_time(h.get("started_at")),
            fmt_duration_ms(duration_ms(h.get("started_at"), h.get("completed_at"))),
            shorten(h.get("error_message"), 60),
        )
    console().print(table)
