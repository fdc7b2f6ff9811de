"""The rolling-upgrade window (issue 13): code N runs on schema N and on a newer, compatible schema N+1.

During a rolling upgrade the pre-upgrade hook migrates the database while pods of the previous release still run;
they must stay ready on the newer schema (migrations are additive). A schema that dropped something this code uses
is refused with the reason, and ``cloacina db downgrade`` reverts migrations (``--to REV``) or, without ``--to``,
is the pre-rollback check: exit 0 when the release rolled back to can run on the schema as it is.

A "newer release" is simulated on a migrated database: its ``alembic_version`` is moved to a revision this code
does not know, and an additive (or destructive) change is applied by hand. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cloacina.cli.db import db_group
from cloacina.errors import SchemaNotMigratedError
from cloacina.runner.default_runner import DefaultRunner
from cloacina.store.database import Database
from tests.conftest import Backend
from tests.distributed_harness import service_db_url

NEXT = "9001"  # a revision of a release newer than this code


@pytest.fixture
def db(durable_backend: Backend) -> Iterator[Database]:
    database = Database(durable_backend.url, schema=durable_backend.schema)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def db_url(durable_backend: Backend, db: Database) -> str:
    """The URL a command line gets for the same database (PostgreSQL: the schema in ``search_path``)."""
    if durable_backend.schema is None:
        return durable_backend.url
    return service_db_url(durable_backend.url, durable_backend.schema)


def newer_release(db: Database, *statements: str) -> None:
    """Pretend a newer release migrated ``db``: run ``statements`` and move the revision to :data:`NEXT`."""
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
        conn.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": NEXT})


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(db_group, list(args))
    return result.exit_code, result.output


def test_code_runs_on_a_newer_additive_schema(db: Database, durable_backend: Backend) -> None:
    head = db.head_revision()
    newer_release(
        db,
        "CREATE TABLE next_release_things (id integer PRIMARY KEY)",
        "ALTER TABLE workflow_runs ADD COLUMN next_release_note varchar(40)",
    )
    status = db.schema_status()
    assert (status.current, status.head, status.relation, status.compatible) == (NEXT, head, "newer", True)
    db.check_migrated()  # the previous release's pods stay ready
    db.upgrade()  # and its migrate hook has nothing to do
    assert db.current_revision() == NEXT
    # The code really works on it: a whole run on the newer schema.
    with DefaultRunner(durable_backend.url, schema=durable_backend.schema) as runner:
        import cloacina as cloaca

        with cloaca.WorkflowBuilder("window_flow"):

            @cloaca.task(id="only")
            def only(context: cloaca.Context) -> cloaca.Context:
                context.set("ran", True)
                return context

        result = runner.execute("window_flow", cloaca.Context({}))
    assert result.status == "Completed" and result.final_context.get("ran") is True


def test_a_newer_schema_without_what_this_code_uses_is_refused(db: Database) -> None:
    newer_release(db, "DROP TABLE task_attempts")
    with pytest.raises(
        SchemaNotMigratedError, match=rf"at migration {NEXT}, newer .*\(table task_attempts is missing\)"
    ):
        db.check_migrated()
    with pytest.raises(SchemaNotMigratedError, match="not compatible"):
        db.upgrade()


def test_a_required_column_this_code_does_not_know_is_refused(db: Database, durable_backend: Backend) -> None:
    if durable_backend.name != "postgresql":
        pytest.skip("SQLite cannot add a NOT NULL column without a default")
    newer_release(db, "ALTER TABLE workflow_runs ADD COLUMN region text NOT NULL")
    with pytest.raises(SchemaNotMigratedError, match=r"workflow_runs\.region is required and unknown"):
        db.check_migrated()


def test_an_older_schema_needs_an_upgrade(db: Database) -> None:
    revisions = sorted(db.known_revisions())
    db.downgrade(revisions[-2])
    with pytest.raises(SchemaNotMigratedError, match="run `cloacina db upgrade`"):
        db.check_migrated()
    db.upgrade()
    db.check_migrated()


def test_cli_downgrade_and_the_pre_rollback_check(db: Database, db_url: str) -> None:
    head = db.head_revision()
    previous = sorted(db.known_revisions())[-2]
    code, output = invoke("downgrade", "--db", db_url)
    assert code == 0 and "nothing to downgrade" in output, output
    code, output = invoke("downgrade", "--db", db_url, "--to", previous)
    assert code == 0 and f"from {head} to {previous}" in output, output
    assert db.current_revision() == previous
    code, output = invoke("downgrade", "--db", db_url)  # older than this release: that is for `db upgrade`
    assert code == 1 and "cloacina db upgrade" in output
    code, output = invoke("current", "--db", db_url, "--check")
    assert code == 1
    code, output = invoke("upgrade", "--db", db_url)
    assert code == 0 and db.current_revision() == head
    code, output = invoke("downgrade", "--db", db_url, "--to", "no-such-revision")
    assert code == 1 and "does not know migration 'no-such-revision'" in output and "Traceback" not in output


def test_cli_on_a_newer_schema(db: Database, db_url: str) -> None:
    newer_release(db, "ALTER TABLE workflow_runs ADD COLUMN next_release_note varchar(40)")
    assert invoke("current", "--db", db_url, "--check")[0] == 0
    code, output = invoke("upgrade", "--db", db_url)
    assert code == 0 and "compatible" in output and "nothing to do" in output, output
    code, output = invoke("downgrade", "--db", db_url)  # the pre-rollback hook of this (older) release
    assert code == 0 and "kept as it is" in output, output
    code, output = invoke("downgrade", "--db", db_url, "--to", db.head_revision() or "")
    assert code == 1 and f"run `cloacina db downgrade --to {db.head_revision()}` with the release" in output

    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE task_attempts"))
    code, output = invoke("downgrade", "--db", db_url)
    assert code == 1 and "not compatible" in output and "task_attempts" in output
    assert invoke("current", "--db", db_url, "--check")[0] == 1
    assert invoke("upgrade", "--db", db_url)[0] == 1
