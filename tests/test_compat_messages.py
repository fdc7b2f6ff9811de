"""CLOACA_API §19: the error messages code written for cloaca matches, one test per row of the table (SQLite
unless the row is about PostgreSQL), and the exact signature of ``DefaultRunner.with_schema``."""

from __future__ import annotations

import inspect
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

import cloacina as cloaca
from tests.conftest import PG_URL, require_postgres

pytestmark = pytest.mark.timeout(120)
NO_LOOPS = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
UNKNOWN = "6f1c3e2a-0000-4000-8000-0000000000ab"
PASSWORD = "pw-s3cret-19"  # must never appear in a message


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[cloaca.DefaultRunner]:
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, cron_enable_recovery=False)
    with cloaca.DefaultRunner(f"sqlite://{tmp_path / 'messages.db'}", config) as r:
        yield r


def _admin_engine() -> Engine:
    return create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))


def _url_as(user: str, password: str) -> str:
    return make_url(PG_URL).set(username=user, password=password).render_as_string(hide_password=False)


# -- WorkflowBuilder and @task -------------------------------------------------------------------------------
def test_add_task_of_an_unregistered_id() -> None:
    builder = cloaca.WorkflowBuilder("msg_missing")
    with pytest.raises(ValueError, match="not found in registry"):
        builder.add_task("no_such_task")


@pytest.mark.parametrize("value", [123, None, 4.5, ["a"], object()])
def test_add_task_of_neither_a_str_nor_a_function(value: object) -> None:
    builder = cloaca.WorkflowBuilder("msg_kind")
    with pytest.raises(ValueError) as info:
        builder.add_task(value)  # type: ignore[arg-type]
    assert "Task must be either a string task ID or a function object with __name__ attribute" in str(info.value)


def test_build_of_an_empty_workflow() -> None:
    with pytest.raises(ValueError, match="Workflow cannot be empty"):
        cloaca.WorkflowBuilder("msg_empty").build()
    with pytest.raises(ValueError, match="Workflow cannot be empty"), cloaca.WorkflowBuilder("msg_empty_block"):
        pass  # the block's exit validates the same way


@pytest.mark.parametrize(
    ("keywords", "names"),
    [
        ({"retry_attempts": 2}, "retry_attempts"),
        ({"retry_delay_ms": 10, "retry_attempts": 2}, "retry_attempts, retry_delay_ms"),
        ({"retry_backoff": "fixed"}, "retry_backoff"),
    ],
)
def test_retry_policy_with_retry_keywords(keywords: dict[str, object], names: str) -> None:
    expected = (
        f"@task(retry=RetryPolicy(...)) cannot be combined with the retry_* keyword arguments (got: {names}). "
        "Use the RetryPolicy object OR the keywords, not both."
    )
    with pytest.raises(ValueError) as info:

        @cloaca.task(id="msg_retry_t", retry=cloaca.RetryPolicy.default(), **keywords)
        def t(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    assert expected in str(info.value)


# -- cron management -----------------------------------------------------------------------------------------
def test_get_cron_schedule_unknown(runner: cloaca.DefaultRunner) -> None:
    with pytest.raises(ValueError, match=r"^Failed to get cron schedule"):
        runner.get_cron_schedule(UNKNOWN)


def test_update_and_set_enabled_of_an_unknown_id_say_update(runner: cloaca.DefaultRunner) -> None:
    calls = [
        lambda: runner.update_cron_schedule(UNKNOWN, "0 2 * * *", "UTC"),
        lambda: runner.set_cron_schedule_enabled(UNKNOWN, True),
        lambda: runner.set_cron_schedule_enabled(UNKNOWN, False),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith("Failed to update cron schedule") and "Failed to get" not in message, message
    deleted = runner.register_cron_workflow("msg_cron", "0 2 * * *", "UTC")
    runner.delete_cron_schedule(deleted)
    with pytest.raises(ValueError, match=r"^Failed to update cron schedule"):
        runner.set_cron_schedule_enabled(deleted, True)  # a deleted schedule is unknown too


def test_delete_cron_schedule_unknown(runner: cloaca.DefaultRunner) -> None:
    with pytest.raises(ValueError, match=r"^Failed to delete cron schedule"):
        runner.delete_cron_schedule(UNKNOWN)
    sid = runner.register_cron_workflow("msg_cron", "0 2 * * *", "UTC")
    assert runner.delete_cron_schedule(sid) is None
    with pytest.raises(ValueError, match=r"^Failed to delete cron schedule"):
        runner.delete_cron_schedule(sid)  # deleted once already


# -- execute -------------------------------------------------------------------------------------------------
def test_execute_infrastructure_failure(tmp_path: Path) -> None:
    with cloaca.WorkflowBuilder("msg_exec"):

        @cloaca.task(id="noop")
        def noop(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    path = tmp_path / "broken.db"
    with cloaca.DefaultRunner(f"sqlite://{path}", NO_LOOPS) as runner:
        assert runner.execute("msg_exec", cloaca.Context({})).status == "Completed"
        with sqlite3.connect(path) as conn:  # the database loses its runs table under the runner
            conn.execute("DROP TABLE task_attempts")
            conn.execute("DROP TABLE task_runs")
            conn.execute("DROP TABLE workflow_runs")
        with pytest.raises(ValueError) as info:
            runner.execute("msg_exec", cloaca.Context({}))
    assert str(info.value).startswith("Workflow execution failed: ")
    assert "workflow_runs" in str(info.value)  # the cause follows


# -- DefaultRunner.with_schema -------------------------------------------------------------------------------
def test_with_schema_signature_is_exactly_cloacas() -> None:
    assert isinstance(inspect.getattr_static(cloaca.DefaultRunner, "with_schema"), staticmethod)
    parameters = inspect.signature(cloaca.DefaultRunner.with_schema).parameters
    assert list(parameters) == ["database_url", "schema"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in parameters.values())


@pytest.mark.parametrize("url", ["sqlite://tenant.db", ":memory:", "/tmp/tenant.db", "mysql://u@h/db"])
def test_with_schema_needs_postgresql(url: str) -> None:
    with pytest.raises(ValueError, match="Schema-based multi-tenancy requires PostgreSQL"):
        cloaca.DefaultRunner.with_schema(url, "tenant_a")


def test_with_schema_empty_name() -> None:
    with pytest.raises(ValueError, match="Schema name cannot be empty"):
        cloaca.DefaultRunner.with_schema(PG_URL, "")


@pytest.mark.parametrize("schema", ["tenant-a", "tenant a", "tenant.a", 'x"; DROP TABLE workflow_runs; --'])
def test_with_schema_name_of_other_characters(schema: str) -> None:
    with pytest.raises(ValueError, match="Schema name must contain only alphanumeric characters and underscores"):
        cloaca.DefaultRunner.with_schema(PG_URL, schema)


def _assert_set_up_failure(error: BaseException, schema: str) -> None:
    assert isinstance(error, RuntimeError | ValueError)
    message = str(error)
    prefix = f"Failed to set up schema '{schema}': "
    assert message.startswith(prefix) and len(message) > len(prefix), message  # the cause follows
    assert PASSWORD not in message


def test_with_schema_database_unreachable() -> None:
    url = f"postgresql://someone:{PASSWORD}@127.0.0.1:1/none"
    with pytest.raises(RuntimeError) as info:
        cloaca.DefaultRunner.with_schema(url, "tenant_x")
    _assert_set_up_failure(info.value, "tenant_x")


@pytest.mark.postgres
def test_with_schema_login_refused() -> None:
    require_postgres()
    role = f"no_such_role_{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError) as info:
        cloaca.DefaultRunner.with_schema(_url_as(role, PASSWORD), "tenant_x")
    _assert_set_up_failure(info.value, "tenant_x")
    assert role in str(info.value)  # the cause names what was refused


@pytest.mark.postgres
def test_with_schema_schema_cannot_be_created(pg_schema: str) -> None:
    role = f"msg_nocreate_{uuid.uuid4().hex[:8]}"
    engine = _admin_engine()
    with engine.begin() as conn:  # may log in, may not create schemas
        conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PASSWORD}'"))
        database = make_url(PG_URL).database
        may_create = conn.execute(text(f"SELECT has_database_privilege('{role}', '{database}', 'CREATE')")).scalar()
        assert may_create is False  # PostgreSQL grants PUBLIC only CONNECT and TEMPORARY on a database
    try:
        with pytest.raises(RuntimeError) as info:
            cloaca.DefaultRunner.with_schema(_url_as(role, PASSWORD), pg_schema)
        _assert_set_up_failure(info.value, pg_schema)
        assert "permission denied" in str(info.value)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        engine.dispose()


@pytest.mark.postgres
def test_with_schema_config_is_the_configured_form(pg_schema: str) -> None:
    config = cloaca.DefaultRunnerConfig(max_concurrent_tasks=2, enable_cron_scheduling=False)
    with cloaca.DefaultRunner.with_schema_config(PG_URL, pg_schema, config) as runner:
        assert runner.db.schema == pg_schema and runner.config.max_concurrent_tasks == 2
    with pytest.raises(TypeError):
        cloaca.DefaultRunner.with_schema_config(PG_URL, pg_schema, {"max_concurrent_tasks": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Schema-based multi-tenancy requires PostgreSQL"):
        cloaca.DefaultRunner.with_schema_config(":memory:", pg_schema, config)
