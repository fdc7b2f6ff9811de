"""``cloacina db``: apply and inspect the schema migrations of a database.

::

    $ cloacina db upgrade --db postgresql://app:secret@db/cloacina
    Upgraded postgresql+psycopg://app:***@db/cloacina from none to 0003_cron (head).
    $ cloacina db current
    sqlite:////srv/cloacina.db: 0003_cron (head)
    $ cloacina db downgrade --to 0004       # revert the newest migration (run it with the release that made it)
    $ cloacina db downgrade                 # before a rollback: is the schema fit for this release?

The rolling-upgrade window (:mod:`cloacina.store.database`): this release runs on its own schema and on newer ones
that are still compatible with it, so ``db upgrade`` by an older release on a newer, compatible schema has nothing
to do, and a rollback needs no downgrade unless the newer schema is incompatible.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

from cloacina.cli.common import cli_errors, db_option, parse_db, sqlite_path
from cloacina.store.database import Database, SchemaStatus


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
            status = db.schema_status()
            if status.relation == "same":
                click.echo(f"{db.url.display} is already at {status.head} (head); nothing to do.")
                return
            if status.relation == "newer":
                if not status.compatible:
                    raise click.ClickException(status.detail)
                click.echo(f"{status.detail}; nothing to do.")
                return
            with _alembic_errors():
                db.upgrade()
            after = db.current_revision()
        click.echo(f"Upgraded {db.url.display} from {status.current or 'none'} to {after} (head).")
    finally:
        db.dispose()


@db_group.command("downgrade")
@db_option
@click.option(
    "--to",
    "target",
    metavar="REVISION",
    default=None,
    help="Revert migrations down to REVISION (one this release knows). Without it: check that the schema suits "
    "this release (the pre-rollback hook) and revert nothing.",
)
def db_downgrade(db_url: str, target: str | None) -> None:
    """Revert schema migrations, or check that the schema suits this release before a rollback."""
    db = _open(db_url)
    try:
        with cli_errors():
            status = db.schema_status()
            if target is None:
                _check_for_rollback(status)
                return
            known = db.known_revisions()
            if target not in known:
                raise click.ClickException(
                    f"this cloacina does not know migration {target!r} (it knows {', '.join(sorted(known))})"
                )
            if status.relation == "newer":
                raise click.ClickException(
                    f"{db.url.display} is at migration {status.current}, which this cloacina (head {status.head}) "
                    f"does not know: run `cloacina db downgrade --to {target}` with the release that created it"
                )
            if status.current == target:
                click.echo(f"{db.url.display} is already at {target}; nothing to do.")
                return
            with _alembic_errors():
                db.downgrade(target)
            after = db.current_revision()
        click.echo(f"Downgraded {db.url.display} from {status.current or 'none'} to {after or 'none'}.")
    finally:
        db.dispose()


def _check_for_rollback(status: SchemaStatus) -> None:
    """Exit 0 when this release can run on the schema as it is; else say what to do and exit 1."""
    if status.relation == "older":
        raise click.ClickException(f"{status.detail} (nothing to downgrade)")
    if not status.compatible:
        raise click.ClickException(status.detail)
    if status.relation == "same":
        click.echo(f"{status.detail}, as this release needs; nothing to downgrade.")
    else:
        click.echo(f"{status.detail}: kept as it is (the rolling-upgrade window); nothing to downgrade.")


@contextlib.contextmanager
def _alembic_errors() -> Iterator[None]:
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise click.ClickException(f"migration failed: {exc}") from exc


@db_group.command("current")
@db_option
@click.option("--check", is_flag=True, help="Exit with status 1 unless this release can run on the schema.")
def db_current(db_url: str, check: bool) -> None:
    """Show the database's schema revision and whether it needs `cloacina db upgrade`."""
    url = parse_db(db_url)
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):  # do not create the file just to report on it
        raise click.ClickException(f"database {url.display} does not exist; `cloacina db upgrade` creates it")
    db = _open(db_url)
    try:
        with cli_errors():
            status = db.schema_status()
    finally:
        db.dispose()
    if status.relation == "same":
        click.echo(f"{db.url.display}: {status.current} (head)")
    elif status.relation == "newer":
        click.echo(f"{db.url.display}: {status.current} (newer than this release's {status.head}; "
                   f"{'compatible' if status.compatible else 'NOT compatible'})")  # fmt: skip
        if check and not status.compatible:
            raise click.exceptions.Exit(1)
    else:
        click.echo(f"{db.url.display}: {status.current or 'none'} (head is {status.head}; run `cloacina db upgrade`)")
        if check:
            raise click.exceptions.Exit(1)
