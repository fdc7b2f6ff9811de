"""Hot-path statements sent straight through psycopg, on a connection checked out from SQLAlchemy's pool.

The single-statement transitions of :mod:`cloacina.store.run_fast_path` run several times per task. SQLAlchemy's
execution layer (execution context, result metadata, row processing) costs about 85 µs of CPU per statement on
top of psycopg's own work, measured on this project's benchmark machine: more than a third of what a start or a
finish costs the worker. A :class:`DriverStatement` is written as a SQLAlchemy ``text()`` clause (one place, bound
parameters by name), rendered once by SQLAlchemy's psycopg dialect, and then executed by psycopg directly; psycopg
prepares it on the server after a few executions, as it does for SQLAlchemy's.

What SQLAlchemy would otherwise do is kept: a psycopg error is raised as the matching SQLAlchemy exception
(``OperationalError``, ``IntegrityError``, ...), so callers' retry and refusal handling is unchanged, and a
connection the error left broken is invalidated, so the pool replaces it. Timestamps must be aware datetimes (as
:class:`~cloacina.store.models.UTCDateTime` requires) and are sent in UTC; :func:`in_utc` reads them back in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from cloacina.store.models import UTCDateTime


class DriverStatement:
    """A ``text()`` clause run by psycopg on a SQLAlchemy connection's driver connection (PostgreSQL only)."""

    def __init__(self, clause: TextClause) -> None:
        self.clause = clause
        self._timestamps = tuple(
            name for name, bind in clause._bindparams.items() if isinstance(bind.type, UTCDateTime)
        )
        self._sql: str | None = None
        self._order: tuple[str, ...] = ()

    def _rendered(self, c: Connection) -> str:
        """The statement with PostgreSQL's own ``$n`` placeholders, made once: psycopg would otherwise parse its
        ``%(name)s`` form on every execution (it caches that parse only for statements under 4 KiB)."""
        if self._sql is None:
            sql, self._order = _positional(str(self.clause.compile(dialect=c.dialect)))
            self._sql = sql
        return self._sql

    def execute(self, c: Connection, params: Mapping[str, Any]) -> psycopg.Cursor[Any]:
        """Run the statement with ``params``; rows read as named tuples."""
        sql = self._rendered(c)
        values = dict(params)
        for name in self._timestamps:
            value = values.get(name)
            if value is not None:
                values[name] = _utc(value)
        driver = c.connection.driver_connection
        if not isinstance(driver, psycopg.Connection):
            raise TypeError(f"DriverStatement needs a psycopg connection, not {type(driver).__name__}")
        try:
            cursor = psycopg.RawCursor(driver, row_factory=namedtuple_row)
            return cursor.execute(sql, [values[name] for name in self._order])
        except psycopg.Error as exc:
            if driver.closed or driver.broken:
                c.invalidate(exc)
            raise DBAPIError.instance(sql, values, exc, psycopg.Error, dialect=c.dialect) from exc


_NAMED = re.compile(r"%\((\w+)\)s|%%")


def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` in psycopg's ``%(name)s`` form as ``$n`` placeholders (one per name, reused), and the names in
    ``$n`` order.

    >>> _positional("SELECT %(a)s, %(b)s, %(a)s, '100%%'")
    ("SELECT $1, $2, $1, '100%'", ('a', 'b'))
    """
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(order)


def in_utc(row: Any, names: tuple[str, ...]) -> Any:
    """``row`` (a named tuple) with its timestamp fields ``names`` in UTC, as SQLAlchemy's ``UTCDateTime`` reads
    them (psycopg gives them in the session's time zone)."""
    return row._replace(**{name: _utc(getattr(row, name)) for name in names if getattr(row, name) is not None})


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given to the store; use an aware UTC datetime")
    return value.astimezone(UTC)
