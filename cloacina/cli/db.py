"""``cloacina db``: apply and inspect the schema migrations of a database.

::

    $ cloacina db upgrade --db postgresql://app:secret@db/cloacina
    Upgraded postgresql+psycopg://app:***@db/cloacina from none to 0003_cron (head).
    $ cloacina db current
    sqlite:////srv/cloacina.db: 0003_cron (head)
"""

from __future__ import annotations

import os

import click

from cloacina.cli.common import cli_errors, db_option, parse_db, sqlite_path
from cloacina.store.database import Database


@click.group("db")
def db_group() -> None:
    """Database schema migrations."""


def _open(db_url: str) -> Database:
    parse_db(db_url)  # a clean error for a malformed URL
    with cli_errors():
        return Database(db_url)


@db_group.command("upgrade")
@db_option
def db_upgrade(db_url: str) -> None:
    """Migrate the database to the newest schema (creates it if needed)."""
    db = _open(db_url)
    try:
        with cli_errors():
            before = db.current_revision()
            head = db.head_revision()
            if before == head:
                click.echo(f"{db.url.display} is already at {head} (head); nothing to do.")
                return
            db.upgrade()
            after = db.current_revision()
        click.echo(f"Upgraded {db.url.display} from {before or 'none'} to {after} (head).")
    finally:
        db.dispose()


@db_group.command("current")
@db_option
@click.option("--check", is_flag=True, help="Exit with status 1 unless the database is at the newest revision.")
def db_current(db_url: str, check: bool) -> None:
    """Show the database's schema revision and whether it needs `cloacina db upgrade`."""
    url = parse_db(db_url)
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):  # do not create the file just to report on it
        raise click.ClickException(f"database {url.display} does not exist; `cloacina db upgrade` creates it")
    db = _open(db_url)
    try:
        with cli_errors():
            current, head = db.current_revision(), db.head_revision()
    finally:
        db.dispose()
    if current == head:
        click.echo(f"{db.url.display}: {current} (head)")
    else:
        click.echo(f"{db.url.display}: {current or 'none'} (head is {head}; run `cloacina db upgrade`)")
        if check:
            raise click.exceptions.Exit(1)
