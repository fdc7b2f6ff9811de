"""``cloacina pools``: define, list and delete task pools (slots shared by every worker; our extension).

A task declared with ``@task(pool="warehouse")`` runs only while its pool has a slot free; a task naming a pool
that does not exist fails, with this command in its error. Changes apply at once, to every worker.

::

    $ cloacina pools set warehouse --slots 4 --description "the data warehouse"
    $ cloacina pools list
    $ cloacina pools list --json
    $ cloacina pools set warehouse --slots 0      # pause: its tasks wait
    $ cloacina pools delete warehouse
"""

from __future__ import annotations

import click

from cloacina.cli.common import console, db_option, emit_json, fmt_time, json_option, management_runner, new_table


@click.group("pools")
def pools_group() -> None:
    """Task pools: set, list, delete."""


@pools_group.command("set")
@click.argument("name")
@click.option("--slots", type=int, required=True, help="How many slots the pool has (0 pauses its tasks).")
@click.option("--description", default=None, help="What the pool protects.")
@db_option
def pools_set(name: str, slots: int, description: str | None, db_url: str) -> None:
    """Create pool NAME, or change its slots (and description)."""
    if slots < 0:
        raise click.BadParameter(f"must be >= 0 (0 pauses the pool), got {slots}", param_hint="--slots")
    with management_runner(db_url) as runner:
        before = runner.get_pool(name)
        pool = runner.set_pool(name, slots, description)
    if before is None:
        click.echo(f"Pool {name!r} created with {slots} slot(s).")
    elif before["slots"] == slots:
        click.echo(f"Pool {name!r} has {slots} slot(s) (unchanged); {pool['used']} in use.")
    else:
        click.echo(f"Pool {name!r}: {before['slots']} -> {slots} slot(s); {pool['used']} in use.")


@pools_group.command("list")
@db_option
@json_option
def pools_list(db_url: str, as_json: bool) -> None:
    """List pools with their slots, the slots in use and the tasks waiting for one."""
    with management_runner(db_url) as runner:
        pools = runner.list_pools()
    if as_json:
        emit_json(pools)
        return
    if not pools:
        click.echo("No pools yet; create one with `cloacina pools set NAME --slots N`.")
        return
    table = new_table("Task pools")
    table.add_column("pool", no_wrap=True)
    for column in ("slots", "used", "free", "waiting"):
        table.add_column(column, justify="right")
    table.add_column("updated")
    table.add_column("description", overflow="fold")
    for p in pools:
        free = max(0, p["slots"] - p["used"])
        table.add_row(
            p["name"],
            str(p["slots"]) if p["slots"] else "[yellow]0 (paused)[/yellow]",
            str(p["used"]),
            str(free),
            f"[yellow]{p['waiting']}[/yellow]" if p["waiting"] else "0",
            fmt_time(p["updated_at"]),
            p["description"] or "",
        )
    console().print(table)


@pools_group.command("delete")
@click.argument("name")
@db_option
def pools_delete(name: str, db_url: str) -> None:
    """Delete pool NAME. Tasks waiting for it fail (their pool is undefined); running ones finish."""
    with management_runner(db_url) as runner:
        deleted = runner.delete_pool(name)
    if not deleted:
        raise click.ClickException(f"unknown pool {name!r}")
    click.echo(f"Pool {name!r} deleted.")
