"""Pieces every ``cloacina`` subcommand shares: the ``--db`` option, error reporting, JSON and table output.

Conventions of the command line:

- ``--db URL`` on every command, else ``$CLOACINA_DATABASE_URL``, else ``sqlite://cloacina.db`` (./cloacina.db).
  Only :attr:`cloacina.store.urls.DatabaseURL.display` (password masked) is ever printed.
- Expected failures (unknown trigger, unreachable database, bad app) print ``Error: ...`` on stderr and exit 1;
  usage mistakes exit 2 (click's convention).
- ``--json`` prints one JSON document on stdout (timestamps as ISO-8601 strings); otherwise rich tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from cloacina.definitions.app_loader import AppLoadError
from cloacina.errors import CloacinaError
from cloacina.observability.logs import configure_logging as install_log_handler
from cloacina.runner.config import DefaultRunnerConfig
from cloacina.runner.default_runner import DefaultRunner
from cloacina.store.urls import DatabaseURL, parse_database_url
from cloacina.timestamps import as_utc, iso

DEFAULT_DATABASE_URL = "sqlite://cloacina.db"
DATABASE_ENV_VAR = "CLOACINA_DATABASE_URL"
PIPE_WIDTH = 200
F = TypeVar("F", bound=Callable[..., Any])


def db_option(func: F) -> F:
    """The ``--db URL`` option every command takes."""
    return click.option(
        "--db",
        "db_url",
        metavar="URL",
        envvar=DATABASE_ENV_VAR,
        default=DEFAULT_DATABASE_URL,
        show_default=True,
        show_envvar=True,
        help="Database: sqlite://rel.db, sqlite:///abs.db or postgresql://user:pass@host/db.",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")(func)


# -- errors ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn the errors a user can cause (bad URL, unknown name, broken app) into ``Error: ...`` and exit 1."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except (AppLoadError, CloacinaError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database error: {type(reason).__name__}: {reason}") from exc


def parse_db(db_url: str) -> DatabaseURL:
    with cli_errors():
        return parse_database_url(db_url)


def sqlite_path(url: DatabaseURL) -> str | None:
    """The file of a file-backed SQLite URL, else ``None``."""
    if url.dialect != "sqlite" or url.is_memory:
        return None
    return make_url(url.sqlalchemy_url).database


@contextlib.contextmanager
def management_runner(db_url: str) -> Iterator[DefaultRunner]:
    """A runner for reading and changing the database only: no trigger polling, no cron, no run recovery.

    A SQLite file that does not exist is an error here (a mistyped ``--db`` must not create an empty database
    and report "nothing found").
    """
    url = parse_db(db_url)
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        raise click.ClickException(
            f"database {url.display} does not exist; check --db (or ${DATABASE_ENV_VAR}), "
            "or create it with `cloacina db upgrade`"
        )
    config = DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False, enable_recovery=False)
    with cli_errors():
        runner = DefaultRunner(db_url, config)
    try:
        with cli_errors():
            yield runner
    finally:
        runner.shutdown()


# -- output ----------------------------------------------------------------------------------------------
def console() -> Console:
    """A console on the current stdout (click's test runner swaps it, so never cache one).

    On a terminal tables fit its width; into a pipe or file they are not squeezed into 80 columns but laid out
    ``$COLUMNS`` (default 200) wide, so that ids and timestamps stay whole for ``grep`` and ``less``.
    """
    out = sys.stdout
    width = None
    if not (hasattr(out, "isatty") and out.isatty()):
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH
    return Console(file=out, highlight=False, width=width)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False))


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    return as_utc(value)


def fmt_time(value: datetime | str | None, *, full: bool = False) -> str:
    """A timestamp in local time, as short as is unambiguous: ``14:03:07`` today, ``05-01 14:03`` this year,
    else ``2023-05-01``; ``full`` always gives ``2024-05-01 14:03:07``. ``-`` for none."""
    moment = _as_datetime(value)
    if moment is None:
        return "-"
    local, today = moment.astimezone(), datetime.now().astimezone()
    if full:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    if local.date() == today.date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%m-%d %H:%M") if local.year == today.year else local.strftime("%Y-%m-%d")


def new_table(title: str) -> Table:
    """A list table in the house style: left title, bold header, no vertical rules (fits narrow terminals)."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAVY,
        header_style="bold",
        pad_edge=False,
        collapse_padding=True,
    )


def duration_ms(start: datetime | str | None, end: datetime | str | None) -> int | None:
    begin, finish = _as_datetime(start), _as_datetime(end)
    if begin is None or finish is None:
        return None
    return max(0, int((finish - begin).total_seconds() * 1000))


def fmt_duration_ms(ms: float | None) -> str:
    """``850ms``, ``3.20s``, ``4m05s``, ``2h03m``; ``-`` for none."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{int(ms)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_bool(value: object) -> str:
    return "yes" if value else "no"


def status_style(status: str | None) -> str:
    """Rich markup colour for a run or task status."""
    return {
        "Completed": "green",
        "Failed": "red",
        "Cancelled": "magenta",
        "Running": "cyan",
        "Pending": "yellow",
        "Ready": "yellow",
        "Skipped": "dim",
    }.get(status or "", "")


def styled_status(status: str | None) -> str:
    style = status_style(status)
    text = status or "-"
    return f"[{style}]{text}[/{style}]" if style else text


def shorten(text: str | None, width: int = 80) -> str:
    """``text`` on one line, cut to ``width``, with rich markup escaped: for table cells."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    return escape(flat if len(flat) <= width else flat[: width - 1] + "…")


# -- logging ---------------------------------------------------------------------------------------------
def configure_logging(verbosity: int) -> None:
    """WARNING by default, INFO with ``-v``, DEBUG with ``-vv``: the services' text lines (passwords redacted) on
    whatever ``sys.stderr`` is at each record. A service command (``worker``, ``poller``) then replaces the
    handler with the format its settings ask for."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    install_log_handler("text", level)
