"""Statements sent through psycopg directly (cloacina.store.driver_sql) fail the way SQLAlchemy's do: the same
exception classes, and a connection the error broke is replaced by the pool. Real PostgreSQL, a schema per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from conftest import PG_URL
from sqlalchemy import bindparam, text
from sqlalchemy.exc import IntegrityError, OperationalError

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.store.database import Database
from cloacina.store.driver_sql import DriverStatement, in_utc
from cloacina.store.models import UTCDateTime
from cloacina.store.run_queries import RUN_BY_ID
from cloacina.store.run_records import run_record
from cloacina.store.runs import RunStore
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


def test_timestamps_read_back_in_utc_whatever_the_session_time_zone(db: Database) -> None:
    now = utcnow()
    with db.single_statement() as c:
        c.exec_driver_sql("SET TIME ZONE 'Asia/Tokyo'")
        try:
            row = ECHO.execute(c, {"n": 1, "at": now}).fetchone()
        finally:
            c.exec_driver_sql("RESET TIME ZONE")
    assert row is not None and row.at.utcoffset() == timedelta(hours=9)
    read = in_utc(row, ("at",))
    assert read.at == now and read.at.tzinfo is UTC and read.n == 1


def test_get_run_reads_what_sqlalchemy_reads(db: Database) -> None:
    with cloaca.WorkflowBuilder("driver_read") as builder:
        cloaca.task(id="a")(lambda ctx: ctx)
    store = RunStore(db)
    opened = store.open_run(registry.get_workflow(builder.name), {"k": [1, "x"]})
    assert opened is not None
    with db.connection() as c:
        expected = run_record(c.execute(RUN_BY_ID, {"run_id": opened.run_id}).one())
    assert store.get_run(opened.run_id) == expected
    assert expected.created_at.tzinfo is UTC and expected.input_context == {"k": [1, "x"]}
    assert store.get_run("no-such-run") is None
