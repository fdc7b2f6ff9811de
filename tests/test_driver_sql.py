"""Statements sent through psycopg directly (cloacina.store.driver_sql) fail the way SQLAlchemy's do: the same
exception classes, and a connection the error broke is replaced by the pool. Real PostgreSQL, a schema per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import psycopg
import pytest
from conftest import PG_URL
from sqlalchemy import bindparam, text
from sqlalchemy.exc import IntegrityError, OperationalError

from cloacina.store.database import Database
from cloacina.store.driver_sql import DriverStatement
from cloacina.store.models import UTCDateTime
from cloacina.timestamps import utcnow

pytestmark = pytest.mark.postgres

ECHO = DriverStatement(
    text("SELECT CAST(:n AS integer) AS n, CAST(:at AS timestamptz) AS at, pg_backend_pid() AS pid").bindparams(
        bindparam("at", type_=UTCDateTime())
    )
)


@pytest.fixture
def db(pg_schema: str) -> Iterator[Database]:
    database = Database(PG_URL, schema=pg_schema, pool_size=1)
    database.upgrade()
    yield database
    database.dispose()


def test_rows_read_as_named_tuples_and_timestamps_go_in_utc(db: Database) -> None:
    now = utcnow()
    with db.single_statement() as c:
        row = ECHO.execute(c, {"n": 7, "at": now}).fetchone()
    assert row is not None and row.n == 7 and row.at == now
    with db.single_statement() as c, pytest.raises(ValueError, match="naive datetime"):
        ECHO.execute(c, {"n": 1, "at": datetime(2026, 1, 1)})


def test_a_constraint_violation_is_sqlalchemys_integrity_error(db: Database) -> None:
    insert = DriverStatement(text("INSERT INTO alembic_version (version_num) VALUES (:v)"))
    with db.single_statement() as c:
        current = c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
        with pytest.raises(IntegrityError) as caught:
            insert.execute(c, {"v": current})
    assert isinstance(caught.value.orig, psycopg.errors.UniqueViolation)
    with db.single_statement() as c:  # the connection is still good
        assert ECHO.execute(c, {"n": 2, "at": None}).fetchone() is not None


def test_a_killed_connection_is_an_operational_error_and_is_replaced(db: Database) -> None:
    with db.single_statement() as c:
        row = ECHO.execute(c, {"n": 1, "at": None}).fetchone()
    assert row is not None
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (row.pid,))
    with db.single_statement() as c, pytest.raises(OperationalError):
        ECHO.execute(c, {"n": 1, "at": None})
    with db.single_statement() as c:  # a new connection (the pool holds one): the dead one was invalidated
        again = ECHO.execute(c, {"n": 3, "at": None}).fetchone()
    assert again is not None and again.n == 3 and again.pid != row.pid
