"""CLOACA_API §8: ``DefaultRunner`` lifecycle and execution, database URL forms, ``WorkflowResult``; and the
runner rows of §14 (which builtin each failure is)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

import cloacina as cloaca
from cloacina.runner import default_runner
from tests.conftest import PG_URL, Backend, require_postgres

pytestmark = pytest.mark.timeout(120)
NO_LOOPS = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)


@pytest.fixture(autouse=True)
def workflows() -> None:
    with cloaca.WorkflowBuilder("compat_ok"):

        @cloaca.task(id="double")
        def double(ctx: cloaca.Context) -> cloaca.Context:
            ctx.set("n", ctx.get("n") * 2)
            return ctx

    with cloaca.WorkflowBuilder("compat_fails"):

        @cloaca.task(id="boom", retry_attempts=1)
        def boom(ctx: cloaca.Context) -> cloaca.Context:
            raise RuntimeError("boom")


@pytest.fixture
def runner(backend: Backend) -> Iterator[cloaca.DefaultRunner]:
    with cloaca.DefaultRunner(backend.url, NO_LOOPS, schema=backend.schema) as r:
        yield r


def _rfc3339_utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert text.endswith("+00:00") and parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
    if parsed.microsecond == 0:
        assert "." not in text  # fraction only when non-zero
    return parsed


# -- execute and WorkflowResult ------------------------------------------------------------------------------
def test_execute_with_keyword_names_returns_a_completed_result(runner: cloaca.DefaultRunner) -> None:
    result = runner.execute(workflow_name="compat_ok", context=cloaca.Context({"n": 21}))
    assert isinstance(result, cloaca.WorkflowResult)
    assert result.status == "Completed" and result.error_message is None
    assert isinstance(result.final_context, cloaca.Context) and result.final_context.get("n") == 42
    assert isinstance(result.start_time, str) and isinstance(result.end_time, str)
    assert _rfc3339_utc(result.start_time) <= _rfc3339_utc(result.end_time)
    assert repr(result) == "WorkflowResult(status=Completed, error=None)"
    assert isinstance(result.run_id, str)  # an extra attribute (§17)


def test_a_failing_task_gives_a_failed_result_not_an_exception(runner: cloaca.DefaultRunner) -> None:
    result = runner.execute("compat_fails", cloaca.Context({}))
    assert result.status == "Failed"
    assert result.error_message is not None and "boom" in result.error_message
    assert repr(result) == f"WorkflowResult(status=Failed, error={result.error_message})"
    assert result.end_time is not None and _rfc3339_utc(result.end_time)


def test_unknown_workflow_is_a_value_error(runner: cloaca.DefaultRunner) -> None:
    with pytest.raises(ValueError, match="no_such_workflow"):
        runner.execute("no_such_workflow", cloaca.Context({}))
    assert runner.runs.count_runs() == 0


def test_workflow_timeout_is_a_value_error(backend: Backend) -> None:
    release = threading.Event()
    with cloaca.WorkflowBuilder("compat_slow"):

        @cloaca.task(id="wait", retry_attempts=1)
        def wait(ctx: cloaca.Context) -> cloaca.Context:
            release.wait(30)
            return ctx

    config = cloaca.DefaultRunnerConfig(workflow_timeout_seconds=1, enable_trigger_scheduling=False)
    with cloaca.DefaultRunner(backend.url, config, schema=backend.schema) as runner:
        try:
            with pytest.raises(ValueError) as info:
                runner.execute("compat_slow", cloaca.Context({}))
        finally:
            release.set()
        assert isinstance(info.value, TimeoutError)  # cloacina's error is both
        assert runner.wait_for_run(info.value.run_id, 30).status == "Failed"  # type: ignore[attr-defined]


def test_execute_after_shutdown_is_a_value_error_and_shutdown_is_idempotent(backend: Backend) -> None:
    runner = cloaca.DefaultRunner(backend.url, NO_LOOPS, schema=backend.schema)
    assert runner.shutdown() is None
    assert runner.shutdown() is None
    with pytest.raises(ValueError, match="shut down"):
        runner.execute("compat_ok", cloaca.Context({"n": 1}))


def test_context_manager_shuts_down_and_does_not_swallow_errors(backend: Backend) -> None:
    with (
        pytest.raises(KeyError, match="inside"),
        cloaca.DefaultRunner(backend.url, NO_LOOPS, schema=backend.schema) as runner,
    ):
        assert runner.__exit__(None, None, None) is False  # returns False ...
        raise KeyError("inside")  # ... so this propagates
    with pytest.raises(ValueError):
        runner.execute("compat_ok", cloaca.Context({"n": 1}))


def test_repr() -> None:
    with cloaca.DefaultRunner(":memory:", NO_LOOPS) as runner:
        assert repr(runner) == "DefaultRunner(thread_separated_async_runtime)"


def test_other_failures_are_value_errors_naming_the_operation(backend: Backend) -> None:
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, cron_enable_recovery=False)
    with cloaca.DefaultRunner(backend.url, config, schema=backend.schema) as runner:
        runner.cron_scheduler.stop()  # type: ignore[union-attr]  # nothing else may touch the tables below
        cascade = " CASCADE" if backend.name == "postgresql" else ""
        with runner.db.engine.begin() as conn:  # the database loses tables under the runner's feet
            for table in ("trigger_executions", "cron_executions", "task_attempts", "task_runs"):
                conn.execute(text(f"DROP TABLE {table}{cascade}"))
        with pytest.raises(ValueError, match=r"^Workflow execution failed: ") as failed:
            runner.execute("compat_ok", cloaca.Context({"n": 1}))
        assert isinstance(failed.value.__cause__, Exception)
        with pytest.raises(ValueError, match=r"^Failed to get trigger execution history: "):
            runner.get_trigger_execution_history("any", None, None)
        with pytest.raises(ValueError, match=r"^Failed to get cron execution history: "):
            runner.get_cron_execution_history(str(uuid.uuid4()), None, None)


# -- construction failures (§14) -----------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://localhost:6379/0", "sqlite:////no/such/dir/x.db"])
def test_a_runner_that_cannot_start_is_a_runtime_error(url: str) -> None:
    with pytest.raises(RuntimeError, match=r"^Failed to create DefaultRunner: "):
        cloaca.DefaultRunner(url)


@pytest.mark.postgres
def test_unreachable_postgres_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match=r"^Failed to create DefaultRunner: "):
        cloaca.DefaultRunner("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(RuntimeError, match=r"^Failed to set up schema 'tenant_x': "):  # §19
        cloaca.DefaultRunner.with_schema("postgresql://nobody@127.0.0.1:1/none", "tenant_x")


@pytest.mark.parametrize(
    ("url", "schema"),
    [
        ("sqlite://tenant.db", "tenant_a"),  # not PostgreSQL
        (":memory:", "tenant_a"),
        (PG_URL, ""),  # empty
        (PG_URL, "tenant-a"),  # characters other than letters, digits, _
        (PG_URL, "tenant a"),
        (PG_URL, 'x"; DROP TABLE workflow_runs; --'),
    ],
)
def test_with_schema_validation_is_a_value_error(url: str, schema: str) -> None:
    with pytest.raises(ValueError):
        cloaca.DefaultRunner.with_schema(url, schema)


@pytest.mark.postgres
def test_with_schema_allows_upper_case_and_unicode_letters(pg_schema: str) -> None:
    require_postgres()
    upper = pg_schema.upper()  # folded to lower case, as PostgreSQL folds unquoted names (and cloaca uses them)
    with cloaca.DefaultRunner.with_schema(database_url=PG_URL, schema=upper) as runner:
        assert runner.db.schema == pg_schema
        assert runner.execute("compat_ok", cloaca.Context({"n": 2})).final_context.get("n") == 4
    with cloaca.DefaultRunner.with_schema(PG_URL.replace("postgresql://", "postgres://"), pg_schema) as again:
        assert again.runs.count_runs() == 1  # the same schema
    unicode_name = f"{pg_schema}_é"
    try:
        with cloaca.DefaultRunner.with_schema(PG_URL, unicode_name) as runner:
            assert runner.execute("compat_ok", cloaca.Context({"n": 3})).final_context.get("n") == 6
    finally:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{unicode_name}" CASCADE'))
        engine.dispose()


# -- URL forms -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "form",
    ["sqlite://{d}/a.db", "{d}/b.db", "./c.db", "d.db", "e.sqlite", "f.sqlite3", "file:{d}/g.db", "sqlite:///{d}/h.db"],
)
def test_sqlite_url_forms(form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = form.format(d=tmp_path)
    with cloaca.DefaultRunner(url, NO_LOOPS) as runner:
        assert runner.execute("compat_ok", cloaca.Context({"n": 1})).status == "Completed"
    name = url.rsplit("/", 1)[-1]
    assert (tmp_path / name).is_file()  # a file database, where the URL says
    with cloaca.DefaultRunner(url, NO_LOOPS) as again:
        assert again.runs.count_runs() == 1  # durable


@pytest.mark.parametrize("url", [":memory:", "sqlite://:memory:", "file:compat_mem?mode=memory&cache=shared"])
def test_memory_databases_work_and_memory_is_private_per_runner(url: str) -> None:
    with cloaca.DefaultRunner(url, NO_LOOPS) as first:
        assert first.execute("compat_ok", cloaca.Context({"n": 1})).status == "Completed"
        if url != "file:compat_mem?mode=memory&cache=shared":  # a named shared-cache URI is shared on purpose
            with cloaca.DefaultRunner(url, NO_LOOPS) as second:
                assert second.runs.count_runs() == 0 and first.runs.count_runs() == 1


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_url_forms(scheme: str, pg_schema: str) -> None:
    require_postgres()
    url = PG_URL.replace("postgresql://", f"{scheme}://", 1)
    with cloaca.DefaultRunner(url, NO_LOOPS, schema=pg_schema) as runner:
        assert runner.execute("compat_ok", cloaca.Context({"n": 1})).status == "Completed"


# -- interpreter exit ----------------------------------------------------------------------------------------
def test_live_runners_are_shut_down_at_exit(backend: Backend) -> None:
    runner = cloaca.DefaultRunner(backend.url, NO_LOOPS, schema=backend.schema)
    assert runner in default_runner._LIVE_RUNNERS
    default_runner._shutdown_live_runners()  # what the atexit hook runs
    assert runner not in default_runner._LIVE_RUNNERS
    with pytest.raises(ValueError, match="shut down"):
        runner.execute("compat_ok", cloaca.Context({"n": 1}))


def test_a_script_that_never_calls_shutdown_has_its_runner_shut_down_at_exit(tmp_path: Path) -> None:
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import atexit\n"
        "state = {}\n"
        "# registered before cloacina is imported, so it runs after cloacina's own exit hook (LIFO)\n"
        "atexit.register(lambda: print('closed' if state['runner']._closed else 'open', flush=True))\n"
        "import cloacina as cloaca\n"
        "with cloaca.WorkflowBuilder('w'):\n"
        "    @cloaca.task(id='t')\n"
        "    def t(ctx):\n"
        "        return ctx\n"
        f"state['runner'] = cloaca.DefaultRunner('sqlite://{tmp_path}/f.db')\n"
        "print(state['runner'].execute('w', cloaca.Context({})).status, flush=True)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Completed", "closed"]
    assert "error shutting down" not in done.stderr


def test_start_time_is_utc_even_when_stored_elsewhere() -> None:
    record_time = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
    result = cloaca.WorkflowResult("Completed", cloaca.Context({}), None, record_time, None, "r")
    assert (result.start_time, result.end_time) == ("2025-03-01T02:00:00+00:00", None)
