"""Database URLs the cloaca API accepts, and Alembic migrations, on every backend.

Migrations must produce exactly the schema the SQLAlchemy models describe (``compare_metadata`` finds no
difference), including the partial unique index that arbitrates deduplication; an unmigrated database is
refused with a message telling the user to run ``cloacina db upgrade``; upgrading twice is harmless.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import PG_URL, require_postgres
from sqlalchemy import inspect

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.errors import SchemaNotMigratedError, StoreError
from cloacina.store.database import Database
from cloacina.store.models import Base
from cloacina.store.runs import RunStore
from cloacina.store.urls import parse_database_url

pytestmark = pytest.mark.timeout(60)


# -- URL forms ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [":memory:", "sqlite://", "sqlite://:memory:", "sqlite://any.db?mode=memory"])
def test_memory_urls(url: str) -> None:
    parsed = parse_database_url(url)
    assert (parsed.dialect, parsed.sqlalchemy_url, parsed.is_memory) == ("sqlite", "sqlite://", True)


def test_relative_sqlite_url_is_relative_to_cwd(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = Database("sqlite://relative.db")
    try:
        assert db.url.sqlalchemy_url == f"sqlite:///{tmp_path}/relative.db"
        db.upgrade()
        db.check_migrated()
    finally:
        db.dispose()
    assert (tmp_path / "relative.db").is_file()


@pytest.mark.parametrize(
    "template",
    ["sqlite://{dir}/three.db", "sqlite:///{dir}/four.db", "sqlite://{dir}/rwc.db?mode=rwc"],
    ids=["three-slashes", "four-slashes", "mode-rwc"],
)
def test_absolute_sqlite_urls(tmp_path, monkeypatch, template: str) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # an absolute path must not depend on the working directory
    url = template.format(dir=tmp_path)
    filename = template.rsplit("/", 1)[1].split("?")[0]
    db = Database(url)
    try:
        assert db.url.sqlalchemy_url == f"sqlite:///{tmp_path}/{filename}"
        db.upgrade()
    finally:
        db.dispose()
    assert (tmp_path / filename).is_file()
    assert list(elsewhere.iterdir()) == []
    # The same file opened again is already migrated.
    again = Database(url)
    try:
        again.check_migrated()
    finally:
        again.dispose()


def test_sqlite_mode_rw_needs_an_existing_file(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        parse_database_url(f"sqlite://{tmp_path}/missing.db?mode=rw")
    (tmp_path / "present.db").touch()
    assert parse_database_url(f"sqlite://{tmp_path}/present.db?mode=rw").sqlalchemy_url.endswith("/present.db")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://x.db?mode=bogus", "unsupported sqlite mode 'bogus'"),
        ("sqlite:x.db", "must start with 'sqlite://'"),
        ("mysql://u:hunter2@h/db", "unsupported database URL scheme 'mysql'"),
        ("redis://localhost:6379/0", "unsupported database URL scheme 'redis'"),
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        (None, "non-empty string"),
    ],
)
def test_bad_urls_raise_store_error(url: object, message: str) -> None:
    with pytest.raises(StoreError, match=message) as info:
        parse_database_url(url)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)


def test_bad_url_is_refused_by_the_runner() -> None:
    with pytest.raises(RuntimeError, match="Failed to create DefaultRunner: unsupported database URL") as info:
        cloaca.DefaultRunner("mysql://localhost/db")  # cloaca: RuntimeError
    assert isinstance(info.value.__cause__, StoreError)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_url_forms_and_masked_password(scheme: str) -> None:
    parsed = parse_database_url(f"{scheme}://alice:s3cr3t@db.example:5433/prod?sslmode=require")
    assert parsed.dialect == "postgresql"
    assert parsed.sqlalchemy_url == "postgresql+psycopg://alice:s3cr3t@db.example:5433/prod?sslmode=require"
    assert "s3cr3t" not in parsed.display
    assert parsed.display == "postgresql+psycopg://alice:***@db.example:5433/prod?sslmode=require"


@pytest.mark.postgres
def test_postgres_short_scheme_connects(pg_schema: str) -> None:
    require_postgres()
    db = Database(PG_URL.replace("postgresql://", "postgres://", 1), schema=pg_schema)
    try:
        db.upgrade()
        db.check_migrated()
        db.ping()
    finally:
        db.dispose()


def test_schema_needs_postgres_and_a_safe_name() -> None:
    with pytest.raises(StoreError, match="PostgreSQL"):
        Database(":memory:", schema="tenant_a")
    with pytest.raises(StoreError, match="invalid schema name"):
        Database(PG_URL, schema='x"; DROP TABLE workflow_runs; --')


# -- migrations ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_db(backend):
    db = Database(backend.url, schema=backend.schema)
    yield db
    db.dispose()


def _schema_diffs(db: Database) -> list:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, Base.metadata)


def test_unmigrated_database_is_refused(fresh_db: Database) -> None:
    assert fresh_db.current_revision() is None
    with pytest.raises(SchemaNotMigratedError, match="run `cloacina db upgrade`") as info:
        fresh_db.check_migrated()
    assert isinstance(info.value, StoreError)
    assert "migration none" in str(info.value)
    assert fresh_db.table_names() == []


def test_migrations_produce_exactly_the_models_schema(fresh_db: Database) -> None:
    fresh_db.upgrade()
    assert _schema_diffs(fresh_db) == []
    assert set(fresh_db.table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    fresh_db.check_migrated()
    assert fresh_db.current_revision() == fresh_db.head_revision() is not None


def test_dedup_and_cron_constraints_exist(fresh_db: Database) -> None:
    fresh_db.upgrade()
    with fresh_db.engine.connect() as conn:
        insp = inspect(conn)
        indexes = {ix["name"]: ix for ix in insp.get_indexes("trigger_executions")}
        uniques = {uq["name"]: uq for uq in insp.get_unique_constraints("cron_executions")}
    dedup = indexes["uq_trigger_exec_active"]
    assert dedup["unique"] and dedup["column_names"] == ["trigger_name", "context_hash"]
    where = dedup["dialect_options"].get("postgresql_where") or dedup["dialect_options"].get("sqlite_where")
    assert "dedup_active" in str(where)  # partial: only active executions take part
    assert uniques["uq_cron_exec_time"]["column_names"] == ["schedule_id", "scheduled_time"]


def test_upgrade_is_idempotent_and_keeps_data(fresh_db: Database) -> None:
    fresh_db.upgrade()
    with cloaca.WorkflowBuilder("migrate_wf") as builder:

        @cloaca.task(id="only")
        def only(ctx):
            return ctx

    store = RunStore(fresh_db)
    run_id = store.create_run(registry.get_workflow(builder.name), {"kept": True})
    tables = fresh_db.table_names()
    fresh_db.upgrade()
    fresh_db.upgrade("head")
    assert fresh_db.table_names() == tables
    assert _schema_diffs(fresh_db) == []
    fresh_db.check_migrated()
    run = store.get_run(run_id)  # type: ignore[arg-type]
    assert run is not None and run.input_context == {"kept": True}


def test_runner_migrates_a_new_database(durable_backend) -> None:
    with cloaca.DefaultRunner(durable_backend.url, schema=durable_backend.schema) as runner:
        runner.db.check_migrated()
    # A second runner on the same database finds it migrated and upgrades nothing.
    with cloaca.DefaultRunner(durable_backend.url, schema=durable_backend.schema) as runner:
        assert runner.db.current_revision() == runner.db.head_revision()


def test_other_sqlite_url_options_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="cloacina.store"):
        parsed = parse_database_url("sqlite://x.db?mode=rwc&cache=shared&_journal_mode=WAL")  # cloaca ignores them
    assert parsed.sqlalchemy_url.endswith("/x.db") and not parsed.is_memory
    assert "ignoring sqlite URL option(s) ['_journal_mode', 'cache']" in caplog.text


def test_read_only_sqlite_is_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "ro.db").touch()
    with pytest.raises(StoreError, match="mode=ro is not supported"):
        parse_database_url(f"sqlite://{tmp_path}/ro.db?mode=ro")
