"""Run control, embedded, on SQLite (memory and file) and PostgreSQL: cancel a run, re-execute one from its failure.

- Cancel while a long task runs: the run ends Cancelled at once and a waiting client gets a "Cancelled" result;
  the task's late result is discarded (its attempt says so, its on_success changes nothing), its successor
  never starts, and the trigger's dedup key is free again: the same context fires a new run right away.
- Cancel a queued run (its only task waits for the one slot): it never runs. Cancel twice, cancel an ended run
  (False), cancel an unknown id (KeyError).
- Retry a failed diamond: a new run linked to the original reuses what completed (counted in the task bodies:
  those do not run again) and runs the rest; the original is unchanged. A Completed or running run cannot be
  retried (ValueError), an unknown one is a KeyError; a cancelled run can be retried.
- The CLI (on a SQLite file and PostgreSQL): ``cloacina runs cancel`` and ``cloacina runs retry`` with their exit
  statuses and messages.
- Migration 0007 goes down to 0006 and up again; on PostgreSQL a cancellation is announced to listeners.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

import cloacina as cloaca
from cloacina.store.database import Database
from cloacina.store.run_end_listener import PgRunEndNotices
from tests.conftest import PG_URL, Backend
from tests.distributed_harness import service_db_url
from tests.support import wait_until

pytestmark = pytest.mark.timeout(90)
FAST = {"trigger_base_poll_interval_ms": 50, "enable_cron_scheduling": False}
WAIT_S = 20.0  # generous bound for things that happen at once (a cancel, a wake-up)


class Bodies:
    """What the task bodies did: how often each ran, plus gates the test opens."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.started = threading.Event()
        self.release = threading.Event()
        self.callbacks: list[str] = []

    def ran(self, task_id: str) -> None:
        with self.lock:
            self.counts[task_id] += 1


def long_workflow(name: str, bodies: Bodies) -> None:
    """``slow -> after``: ``slow`` blocks until the test releases it."""
    with cloaca.WorkflowBuilder(name):

        @cloaca.task(id="slow", retry_attempts=0, on_success=lambda task_id, ctx: bodies.callbacks.append(task_id))
        def slow(ctx: cloaca.Context) -> cloaca.Context:
            bodies.ran("slow")
            bodies.started.set()
            assert bodies.release.wait(60), "the test never released the task"
            ctx.set("slow", True)
            return ctx

        @cloaca.task(id="after", dependencies=["slow"], retry_attempts=0)
        def after(ctx: cloaca.Context) -> cloaca.Context:
            bodies.ran("after")
            return ctx


def diamond_workflow(name: str, bodies: Bodies, failing: set[str]) -> None:
    """``a -> (b, c) -> d``; a task named in ``failing`` raises while it is in the set (the test removes it)."""
    with cloaca.WorkflowBuilder(name):

        def body(task_id: str) -> Any:
            def run(ctx: cloaca.Context) -> cloaca.Context:
                bodies.ran(task_id)
                if task_id in failing:
                    raise RuntimeError(f"{task_id} fails on purpose")
                ctx.set(task_id, bodies.counts[task_id])
                return ctx

            return run

        cloaca.task(id="a", retry_attempts=0)(body("a"))
        cloaca.task(id="b", dependencies=["a"], retry_attempts=0)(body("b"))
        cloaca.task(id="c", dependencies=["a"], retry_attempts=0)(body("c"))
        cloaca.task(id="d", dependencies=["b", "c"], retry_attempts=0)(body("d"))


def _statuses(runner: cloaca.DefaultRunner, run_id: str) -> dict[str, tuple[str, str | None]]:
    return {t: (str(r.status), r.skip_reason or r.error_kind) for t, r in runner.runs.get_tasks(run_id).items()}


# -- cancel -------------------------------------------------------------------------------------------------------
def test_cancel_while_a_long_task_runs(make_runner: Any) -> None:
    bodies = Bodies()
    long_workflow("long_wf", bodies)
    armed = threading.Event()
    armed.set()

    @cloaca.trigger(workflow="long_wf", name="long_item", poll_interval="50ms", allow_concurrent=False)
    def long_item() -> cloaca.TriggerResult:
        return cloaca.TriggerResult.fire({"item": 1}) if armed.is_set() else cloaca.TriggerResult.skip()

    runner = make_runner(**FAST)
    assert bodies.started.wait(WAIT_S), "the first run's task never started"
    (first,) = runner.runs.list_runs(workflow_name="long_wf")
    waited: list[Any] = []
    waiter = threading.Thread(target=lambda: waited.append(runner.wait_for_run(first.run_id, WAIT_S)))
    waiter.start()
    wait_until(lambda: runner.get_trigger_schedule("long_item")["dedup_skip_count"] > 0, WAIT_S, message="a dedup skip")

    assert runner.cancel_run(first.run_id) is True
    waiter.join(WAIT_S)
    assert [w.status for w in waited] == ["Cancelled"], "the waiting client was not told"
    assert waited[0].error_message == "run cancelled" and waited[0].end_time is not None
    # The key is free at once: the same context fires a new run while the first run's task is still running.
    second = wait_until(
        lambda: [r for r in runner.runs.list_runs(workflow_name="long_wf") if r.run_id != first.run_id],
        WAIT_S,
        message="a new run of the same context",
    )
    armed.clear()
    assert len(second) == 1 and second[0].input_context["item"] == 1
    assert runner.cancel_run(second[0].run_id) is True  # it would wait for the gate forever

    bodies.release.set()  # the cancelled task returns now: its result is discarded
    attempts = wait_until(
        lambda: [a for a in runner.runs.get_attempts(first.run_id, "slow") if a.completed_at is not None],
        WAIT_S,
        message="the late result to be recorded as discarded",
    )
    assert [(a.attempt, a.status, a.error_kind) for a in attempts] == [(1, "Cancelled", "cancelled")]
    assert "discarded" in (attempts[0].error_message or "")
    assert "completed after the cancellation" in (attempts[0].error_message or "")
    assert "slow" in bodies.callbacks  # on_success ran with the output, and changed nothing:
    run = runner.runs.get_run(first.run_id)
    assert run is not None and str(run.status) == "Cancelled" and run.final_context is None
    assert _statuses(runner, first.run_id) == {"slow": ("Failed", "cancelled"), "after": ("Skipped", "run_cancelled")}
    assert bodies.counts["after"] == 0, "a task of a cancelled run started"


def test_cancel_a_queued_run(make_runner: Any) -> None:
    bodies = Bodies()
    long_workflow("busy_wf", bodies)
    quiet = Bodies()
    diamond_workflow("queued_wf", quiet, failing=set())
    runner = make_runner(max_concurrent_tasks=1, **FAST)
    busy = runner.execute_async("busy_wf", {})
    assert bodies.started.wait(WAIT_S)  # the only slot is taken
    queued = runner.execute_async("queued_wf", {})
    assert queued.status() == "Pending"

    assert runner.cancel_run(queued.run_id) is True
    assert queued.wait(WAIT_S).status == "Cancelled"
    bodies.release.set()
    assert busy.wait(WAIT_S).status == "Completed"  # the slot went to nothing of the cancelled run
    assert sum(quiet.counts.values()) == 0
    assert set(_statuses(runner, queued.run_id).values()) == {("Skipped", "run_cancelled")}
    assert runner.runs.get_attempts(queued.run_id, "a") == []


def test_cancel_twice_an_ended_run_and_an_unknown_id(make_runner: Any) -> None:
    bodies = Bodies()
    long_workflow("twice_wf", bodies)
    runner = make_runner(**FAST)
    handle = runner.execute_async("twice_wf", {})
    assert bodies.started.wait(WAIT_S)
    assert runner.cancel_run(handle.run_id) is True
    assert runner.cancel_run(handle.run_id) is False
    bodies.release.set()
    done = runner.execute("twice_wf", {})
    assert done.status == "Completed"
    assert runner.cancel_run(done.run_id) is False
    assert str(runner.runs.get_run(done.run_id).status) == "Completed"  # unchanged
    with pytest.raises(KeyError, match="unknown run"):
        runner.cancel_run("00000000-0000-0000-0000-000000000000")


# -- retry --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failing", "reused", "rerun"),
    [({"b"}, {"a", "c"}, {"b", "d"}), ({"d"}, {"a", "b", "c"}, {"d"})],
    ids=["middle-fails", "last-fails"],
)
def test_retry_a_failed_diamond_reuses_what_completed(
    make_runner: Any, failing: set[str], reused: set[str], rerun: set[str]
) -> None:
    bodies = Bodies()
    failing_now = set(failing)
    diamond_workflow("diamond_wf", bodies, failing=failing_now)
    runner = make_runner(**FAST)
    original = runner.execute("diamond_wf", {"seed": 7})
    assert original.status == "Failed"
    before = dict(_statuses(runner, original.run_id))
    assert Counter(bodies.counts) == Counter(dict.fromkeys("abcd", 1))  # d ran too: its rule is Always

    failing_now.clear()  # the cause is fixed
    retry_id = runner.retry_run(original.run_id)
    result = runner.wait_for_run(retry_id, WAIT_S)
    assert result.status == "Completed", result.error_message
    assert bodies.counts == Counter({t: 2 if t in rerun else 1 for t in "abcd"})
    record = runner.runs.get_run(retry_id)
    assert record is not None and record.retry_of == original.run_id and record.input_context == {"seed": 7}
    tasks = runner.runs.get_tasks(retry_id)
    assert {t for t, r in tasks.items() if r.attempt == 0} == reused  # copied, never attempted in this run
    assert {str(r.status) for r in tasks.values()} == {"Completed"}
    assert all(runner.runs.get_attempts(retry_id, t) == [] for t in reused)
    # Reused outputs flow on: d's input merged the original's a and c with the new b.
    assert result.final_context.get("seed") == 7
    assert all(result.final_context.get(t) in (1, 2) for t in "abcd")
    assert tasks["a"].output_context == runner.runs.get_tasks(original.run_id)["a"].output_context
    # The original is untouched.
    again = runner.runs.get_run(original.run_id)
    assert again is not None and str(again.status) == "Failed" and again.retry_of is None
    assert _statuses(runner, original.run_id) == before


def test_retry_refuses_completed_running_and_unknown_runs(make_runner: Any) -> None:
    bodies = Bodies()
    long_workflow("refuse_wf", bodies)
    diamond_workflow("fine_wf", Bodies(), failing=set())
    runner = make_runner(**FAST)
    done = runner.execute("fine_wf", {})
    with pytest.raises(ValueError, match="is Completed: only a Failed or Cancelled run can be retried"):
        runner.retry_run(done.run_id)
    running = runner.execute_async("refuse_wf", {})
    assert bodies.started.wait(WAIT_S)
    with pytest.raises(ValueError, match=r"is (Pending|Running)"):  # Pending until its first start is recorded
        runner.retry_run(running.run_id)
    wait_until(lambda: str(runner.runs.get_run(running.run_id).status) == "Running", WAIT_S, message="Running")
    with pytest.raises(ValueError, match="is Running"):
        runner.retry_run(running.run_id)
    with pytest.raises(KeyError, match="unknown run"):
        runner.retry_run("00000000-0000-0000-0000-000000000000")
    assert len(runner.runs.list_runs()) == 2  # nothing was created

    # A cancelled run can be re-executed: the cancelled task runs again, in the new run.
    assert runner.cancel_run(running.run_id) is True
    bodies.release.set()
    retry_id = runner.retry_run(running.run_id)
    assert runner.wait_for_run(retry_id, WAIT_S).status == "Completed"
    assert bodies.counts == Counter({"slow": 2, "after": 1})


# -- PostgreSQL announces a cancellation; the migration goes down and up ------------------------------------------
def test_a_cancellation_is_announced_by_postgresql(pg_schema: str) -> None:
    bodies = Bodies()
    long_workflow("heard_wf", bodies)
    heard: list[str] = []
    with cloaca.DefaultRunner(PG_URL, cloaca.DefaultRunnerConfig(**FAST), schema=pg_schema) as runner:
        notices = PgRunEndNotices(runner.db)
        try:
            notices.listen(heard.append)
            wait_until(lambda: notices.listening, WAIT_S, message="LISTEN")
            handle = runner.execute_async("heard_wf", {})
            assert bodies.started.wait(WAIT_S)
            assert runner.runs.cancel_run(handle.run_id) is not None  # the store alone: nobody publishes anything
            wait_until(lambda: heard == [handle.run_id], WAIT_S, message="the cancellation to be announced")
        finally:
            notices.stop()
            bodies.release.set()


def _trigger_definition(db: Database) -> str:
    with db.connection() as c:
        return str(
            c.execute(
                text(
                    "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'workflow_runs'::regclass"
                    " AND tgname = 'cloacina_run_ended'"
                )
            ).scalar_one()
        )


def test_migration_0007_goes_down_and_up(durable_backend: Backend) -> None:
    db = Database(durable_backend.url, schema=durable_backend.schema)
    postgres = durable_backend.name == "postgresql"
    try:
        db.upgrade()
        assert "retry_of" in {c["name"] for c in inspect(db.engine).get_columns("workflow_runs")}
        if postgres:
            assert "'Cancelled'" in _trigger_definition(db)
        db.downgrade("0006")
        assert db.current_revision() == "0006"
        assert "retry_of" not in {c["name"] for c in inspect(db.engine).get_columns("workflow_runs")}
        if postgres:
            assert "'Failed'" in _trigger_definition(db) and "'Cancelled'" not in _trigger_definition(db)
        db.upgrade()
        assert db.current_revision() == db.head_revision()
        if postgres:
            assert "'Cancelled'" in _trigger_definition(db)
    finally:
        db.dispose()


# -- CLI ----------------------------------------------------------------------------------------------------------
APP = """
import os
import cloacina as cloaca

with cloaca.WorkflowBuilder("cli_diamond"):
    for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        def body(ctx, name=name):
            with open(os.environ["CLI_COUNTS"], "a") as f:
                f.write(name + "\\n")
            if name == "b" and os.path.exists(os.environ["CLI_FAIL"]):
                raise RuntimeError("b fails on purpose")
            return ctx
        cloaca.task(id=name, dependencies=deps, retry_attempts=0)(body)
"""


def cli(*args: str) -> Any:
    from cloacina.cli.main import main

    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), catch_exceptions=False)


def test_cli_cancel_and_retry(durable_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / f"cli_control_app_{uuid.uuid4().hex[:8]}.py"  # a module name of this test's own
    app.write_text(APP)
    counts, fail = tmp_path / "counts.txt", tmp_path / "fail"
    monkeypatch.setenv("CLI_COUNTS", str(counts))
    monkeypatch.setenv("CLI_FAIL", str(fail))
    monkeypatch.delenv("CLOACINA_BROKER_URL", raising=False)
    schema = durable_backend.schema
    db = service_db_url(durable_backend.url, schema) if schema else durable_backend.url
    fail.touch()
    from cloacina.definitions.app_loader import load_app

    load_app(str(app))
    config = cloaca.DefaultRunnerConfig(**FAST)
    with cloaca.DefaultRunner(durable_backend.url, config, schema=schema) as runner:
        failed = runner.execute("cli_diamond", {})
        bodies = Bodies()
        long_workflow("cli_long", bodies)
        long_run = runner.execute_async("cli_long", {})
        assert bodies.started.wait(WAIT_S)

        result = cli("runs", "cancel", long_run.run_id, "--db", db)
        assert (result.exit_code, result.output.strip()) == (0, f"run {long_run.run_id} cancelled")
        assert long_run.wait(WAIT_S).status == "Cancelled"
        result = cli("runs", "cancel", long_run.run_id, "--db", db)
        assert result.exit_code == 1
        assert f"run {long_run.run_id} had already ended (Cancelled); nothing to cancel" in result.output
        result = cli("runs", "cancel", long_run.run_id, "--db", db, "--json")
        assert result.exit_code == 1
        assert json.loads(result.output) == {"run_id": long_run.run_id, "cancelled": False, "status": "Cancelled"}
        bodies.release.set()
    assert failed.status == "Failed"
    assert cli("runs", "cancel", "no-such-run", "--db", db).exit_code == 1

    result = cli("runs", "retry", "no-such-run", "--db", db)
    assert result.exit_code == 1 and "unknown run 'no-such-run'" in result.output
    result = cli("runs", "retry", long_run.run_id, "--db", db, "--timeout", "5")
    assert result.exit_code == 2 and "--timeout only applies with --wait" in result.output

    fail.unlink()  # fixed: the retry runs b and d only (embedded: this command runs it, with the app's code)
    counts.write_text("")
    result = cli("runs", "retry", failed.run_id, "--db", db, "--app", str(app), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["status"], shown["retry_of"]) == ("Completed", failed.run_id)
    assert sorted(counts.read_text().split()) == ["b", "d"]
    result = cli("runs", "retry", shown["run_id"], "--db", db, "--app", str(app))
    assert result.exit_code == 1
    assert "is Completed: only a Failed or Cancelled run can be retried" in result.output
    shown_run = json.loads(cli("runs", "show", shown["run_id"], "--db", db, "--json").output)
    assert shown_run["retry_of"] == failed.run_id
    assert "retry of" in cli("runs", "show", shown["run_id"], "--db", db).output
