"""Contract suite of the run store, run on every backend (in-memory SQLite, file SQLite, PostgreSQL).

Covers the guarded state transitions of :class:`cloacina.store.runs.RunStore` (a duplicate delivery, a late
result of an old attempt or a second planner never wins), planning in the step that finishes a task, the
deduplication arbiter (the partial unique index over active trigger executions), the unique cron claim, UTC
timestamps, and, on PostgreSQL only, a real race between threads and schema-per-tenant isolation. URL parsing and
migrations are in ``test_store_schema.py``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import PG_URL
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.exc import StatementError

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.engine.planner import Decision
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.database import Database
from cloacina.store.models import CronExecution, CronSchedule, TaskRun, TriggerExecution, WorkflowRun
from cloacina.store.runs import CronClaim, RunEnd, RunStore, Transition, TriggerClaim

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(backend) -> Iterator[RunStore]:
    db = Database(backend.url, schema=backend.schema)
    db.upgrade()
    yield RunStore(db)
    db.dispose()


def _workflow(name: str = "store_wf") -> Workflow:
    """``extract -> load``; extract allows 3 attempts."""
    with cloaca.WorkflowBuilder(name) as builder:

        @cloaca.task(id="extract", retry_attempts=3)
        def extract(ctx):
            return ctx

        @cloaca.task(id="load", dependencies=["extract"], retry_attempts=0)
        def load(ctx):
            return ctx

    return registry.get_workflow(builder.name)


def _count(store: RunStore, model: type) -> int:
    with store.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _running(store: RunStore, task_id: str = "extract") -> str:
    """A new run whose ``task_id`` is Running attempt 1."""
    run_id = store.create_run(_workflow(), {"n": 1})
    assert run_id is not None
    assert store.apply_decisions(run_id, [Decision(task_id, "run", {"n": 1})]) == [task_id]
    started = store.start_attempt(run_id, task_id)
    assert started is not None and (started.attempt, started.input_context) == (1, {"n": 1})
    return run_id


def _end_of(store: RunStore, run_id: str, workflow: Workflow, step: Transition) -> RunEnd:
    """The end of a run whose last task just finished in ``step``: either that step ended it, or it reported
    every task done and the next planning step ends it (so callbacks can run before the run is seen ended)."""
    ended = step.ended or store.advance(run_id, workflow).ended
    assert ended is not None, step
    assert not store.advance(run_id, workflow).applied  # and it ends only once
    return ended


def _make_due(store: RunStore, run_id: str, task_id: str) -> None:
    """Let a retry delay pass without sleeping: move the task's next attempt time into the past."""
    with store.db.session() as s:
        s.execute(
            update(TaskRun)
            .where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


# -- creation and reading -----------------------------------------------------------------------------------
def test_create_run_writes_run_and_task_rows(store: RunStore) -> None:
    wf = _workflow()
    run_id = store.create_run(wf, {"n": 1, "nested": {"a": [1, 2]}}, deadline_s=60)
    assert run_id is not None
    run = store.get_run(run_id)
    assert run is not None
    assert (run.workflow_name, run.workflow_version, run.status) == ("store_wf", wf.version, RunStatus.PENDING)
    assert run.input_context == {"n": 1, "nested": {"a": [1, 2]}}
    assert run.final_context is None and run.completed_at is None
    assert run.deadline_at is not None and run.deadline_at - run.created_at == timedelta(seconds=60)
    tasks = store.get_tasks(run_id)
    assert list(tasks) == ["extract", "load"]
    assert {t.status for t in tasks.values()} == {TaskStatus.NOT_STARTED}
    assert (tasks["extract"].max_attempts, tasks["load"].max_attempts) == (3, 1)
    assert all(t.attempt == 0 for t in tasks.values())
    assert store.get_run("no-such-run") is None
    assert store.load("no-such-run") is None


def test_list_and_count_runs(store: RunStore) -> None:
    ids = [store.create_run(_workflow(), {"i": i}) for i in range(3)]
    store.create_run(_workflow("other_wf"), {})
    assert store.count_runs() == 4
    assert store.count_runs(status="Pending") == 4
    listed = store.list_runs(workflow_name="store_wf")
    assert sorted(r.run_id for r in listed) == sorted(ids)
    assert len(store.list_runs(limit=2)) == 2
    store.finish_run(ids[0], RunStatus.COMPLETED, {}, None)
    assert [r.run_id for r in store.list_runs(status="Completed")] == [ids[0]]


# -- guarded transitions ------------------------------------------------------------------------------------
def test_apply_decisions_only_from_not_started(store: RunStore) -> None:
    run_id = store.create_run(_workflow(), {})
    assert run_id is not None
    assert store.apply_decisions(run_id, [Decision("extract", "run", {"a": 1})]) == ["extract"]
    # A second planner racing the first: neither a run nor a skip may overwrite the Ready task.
    assert store.apply_decisions(run_id, [Decision("extract", "run", {"a": 2})]) == []
    assert store.apply_decisions(run_id, [Decision("extract", "skip", {}, "rule_false")]) == []
    extract = store.get_tasks(run_id)["extract"]
    assert extract.status == TaskStatus.READY and extract.input_context == {"a": 1}
    # A skip stores the input as the output, so data flows past the skipped task.
    assert store.apply_decisions(run_id, [Decision("load", "skip", {"b": 1}, "rule_false")]) == []
    load = store.get_tasks(run_id)["load"]
    assert (load.status, load.skip_reason, load.output_context) == (TaskStatus.SKIPPED, "rule_false", {"b": 1})


def test_start_attempt_only_from_ready(store: RunStore) -> None:
    wf = _workflow()
    run_id = store.create_run(wf, {})
    assert run_id is not None
    assert store.start_attempt(run_id, "extract") is None  # NotStarted
    assert store.start_attempt(run_id, "no_such_task") is None
    store.apply_decisions(run_id, [Decision("extract", "run", {"x": 1})])
    started = store.start_attempt(run_id, "extract", worker="w1")
    assert started is not None
    assert (started.attempt, started.input_context) == (1, {"x": 1})
    assert (started.workflow_name, started.workflow_version) == ("store_wf", wf.version)
    assert store.start_attempt(run_id, "extract") is None  # already Running: a duplicate delivery
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.RUNNING and run.started_at is not None
    assert [(a.attempt, a.status) for a in store.get_attempts(run_id, "extract")] == [(1, "Running")]


def test_start_attempt_refused_after_run_end(store: RunStore) -> None:
    run_id = store.create_run(_workflow(), {})
    assert run_id is not None
    store.apply_decisions(run_id, [Decision("extract", "run", {})])
    assert store.finish_run(run_id, RunStatus.FAILED, None, "stopped") is not None
    assert store.get_tasks(run_id)["extract"].skip_reason == "run_ended"
    # Even if the row were Ready again, an ended run never starts an attempt.
    with store.db.session() as s:
        s.execute(update(TaskRun).where(TaskRun.run_id == run_id).values(status=TaskStatus.READY.value))
    assert store.start_attempt(run_id, "extract") is None
    assert store.get_attempts(run_id, "extract") == []


def test_complete_only_for_the_current_running_attempt(store: RunStore) -> None:
    run_id = _running(store)
    retry_at = datetime.now(UTC) + timedelta(minutes=10)
    assert store.fail_attempt(run_id, "extract", 1, "ConnectionError: down", "transient", retry_at).applied
    extract = store.get_tasks(run_id)["extract"]
    assert extract.status == TaskStatus.READY and extract.next_attempt_at == retry_at
    assert extract.error_kind == "transient"
    assert store.start_attempt(run_id, "extract") is None  # the retry delay has not passed
    assert not store.complete_attempt(run_id, "extract", 1, {"late": True})  # attempt 1 already failed
    _make_due(store, run_id, "extract")
    started = store.start_attempt(run_id, "extract")
    assert started is not None and (started.attempt, started.input_context) == (2, {"n": 1})
    assert not store.complete_attempt(run_id, "extract", 1, {"late": True})  # late result of an old attempt
    assert not store.fail_attempt(run_id, "extract", 1, "late", "error", None)
    assert store.complete_attempt(run_id, "extract", 2, {"n": 2}).applied
    assert not store.complete_attempt(run_id, "extract", 2, {"n": 3})  # only once
    assert not store.fail_attempt(run_id, "extract", 2, "late", "error", None)
    extract = store.get_tasks(run_id)["extract"]
    assert (extract.status, extract.attempt, extract.output_context) == (TaskStatus.COMPLETED, 2, {"n": 2})
    assert extract.error_message is None
    attempts = store.get_attempts(run_id, "extract")
    assert [(a.attempt, a.status, a.error_message) for a in attempts] == [
        (1, "Failed", "ConnectionError: down"),
        (2, "Completed", None),
    ]
    assert all(a.completed_at is not None and a.completed_at >= a.started_at for a in attempts)
    assert all(a.duration_ms is not None and a.duration_ms >= 0 for a in attempts)


def test_fail_without_retry_is_final(store: RunStore) -> None:
    run_id = _running(store)
    assert store.fail_attempt(run_id, "extract", 1, "ValueError: bad", "error", None).applied
    extract = store.get_tasks(run_id)["extract"]
    assert (extract.status, extract.error_message) == (TaskStatus.FAILED, "ValueError: bad")
    assert extract.completed_at is not None
    assert store.start_attempt(run_id, "extract") is None
    assert not store.complete_attempt(run_id, "extract", 1, {})


def test_completion_plans_the_next_task_and_ends_the_run_in_one_step(store: RunStore) -> None:
    wf = _workflow()
    claim = TriggerClaim("watcher", "d" * 64, dedup=True)
    run_id = store.create_run(wf, {"n": 1}, trigger=claim)
    assert run_id is not None
    first = store.advance(run_id, wf)
    assert (first.applied, first.ready, first.ended) == (True, ("extract",), None)
    assert store.advance(run_id, wf).ready == ()  # planning twice never makes a task Ready twice
    store.start_attempt(run_id, "extract")
    step = store.complete_attempt(run_id, "extract", 1, {"n": 1, "rows": 5}, wf)
    assert (step.applied, step.ready, step.ended) == (True, ("load",), None)
    assert store.get_tasks(run_id)["load"].input_context == {"n": 1, "rows": 5}
    store.start_attempt(run_id, "load")
    last = store.complete_attempt(run_id, "load", 1, {"n": 1, "rows": 5, "loaded": True}, wf)
    assert last.applied and last.ready == ()
    ended = _end_of(store, run_id, wf, last)
    assert (ended.run_id, ended.status) == (run_id, RunStatus.COMPLETED)
    assert (ended.trigger_name, ended.context_hash) == ("watcher", "d" * 64)
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.COMPLETED
    assert run.final_context == {"n": 1, "rows": 5, "loaded": True} and run.error_message is None
    assert store.create_run(wf, {"n": 1}, trigger=claim) is not None  # the key freed with the run's end


def test_final_failure_ends_the_run_naming_the_task(store: RunStore) -> None:
    wf = _workflow()
    run_id = store.create_run(wf, {})
    assert run_id is not None
    store.advance(run_id, wf)
    store.start_attempt(run_id, "extract")
    retry_at = datetime.now(UTC)
    retrying = store.fail_attempt(run_id, "extract", 1, "ConnectionError: blip", "transient", retry_at, wf)
    assert (retrying.applied, retrying.ready, retrying.ended) == (True, (), None)  # a retry plans nothing
    store.start_attempt(run_id, "extract")
    step = store.fail_attempt(run_id, "extract", 2, "ValueError: bad row", "error", None, wf)
    assert step.ended is None and step.ready == ("load",)  # the default rule (Always) runs load all the same
    store.start_attempt(run_id, "load")
    last = store.complete_attempt(run_id, "load", 1, {"loaded": True}, wf)
    assert _end_of(store, run_id, wf, last).status == RunStatus.FAILED  # a failed task fails the run
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.FAILED
    assert run.error_message is not None and "extract: ValueError: bad row" in run.error_message
    assert store.get_tasks(run_id)["load"].status == TaskStatus.COMPLETED


def test_finish_run_only_once_and_settles_every_task(store: RunStore) -> None:
    run_id = _running(store)
    ended = store.finish_run(run_id, RunStatus.FAILED, {"partial": 1}, "workflow timed out after 1s")
    assert ended is not None and (ended.run_id, ended.status) == (run_id, RunStatus.FAILED)
    assert store.finish_run(run_id, RunStatus.COMPLETED, {"other": 1}, None) is None
    run = store.get_run(run_id)
    assert run is not None
    assert (run.status, run.final_context, run.error_message) == (
        RunStatus.FAILED,
        {"partial": 1},
        "workflow timed out after 1s",
    )
    tasks = store.get_tasks(run_id)
    assert tasks["extract"].status == TaskStatus.FAILED and "timed out" in (tasks["extract"].error_message or "")
    assert (tasks["load"].status, tasks["load"].skip_reason) == (TaskStatus.SKIPPED, "run_ended")
    # The attempt that was running when the run ended cannot report late.
    assert not store.complete_attempt(run_id, "extract", 1, {"late": True})


# -- deduplication ------------------------------------------------------------------------------------------
def test_dedup_claim_refuses_a_second_active_run_and_writes_nothing(store: RunStore) -> None:
    claim = TriggerClaim("file_watcher", "h" * 64, dedup=True)
    first = store.create_run(_workflow(), {"f": "a.csv"}, trigger=claim)
    assert first is not None
    counts = (_count(store, WorkflowRun), _count(store, TaskRun), _count(store, TriggerExecution))
    assert store.create_run(_workflow(), {"f": "a.csv"}, trigger=claim) is None
    assert (_count(store, WorkflowRun), _count(store, TaskRun), _count(store, TriggerExecution)) == counts
    run = store.get_run(first)
    assert run is not None and run.trigger_name == "file_watcher"


def test_dedup_key_is_free_once_the_run_ends(store: RunStore) -> None:
    claim = TriggerClaim("file_watcher", "h" * 64, dedup=True)
    first = store.create_run(_workflow(), {}, trigger=claim)
    assert first is not None
    assert store.finish_run(first, RunStatus.FAILED, None, "boom") is not None
    with store.db.session() as s:
        row = s.scalars(select(TriggerExecution).where(TriggerExecution.run_id == first)).one()
        assert row.dedup_active is False and row.completed_at is not None
    second = store.create_run(_workflow(), {}, trigger=claim)
    assert second is not None and second != first
    assert store.create_run(_workflow(), {}, trigger=claim) is None


def test_non_dedup_claims_and_other_triggers_never_conflict(store: RunStore) -> None:
    digest = "a" * 64
    assert store.create_run(_workflow(), {}, trigger=TriggerClaim("t1", digest, dedup=True)) is not None
    loose = [store.create_run(_workflow(), {}, trigger=TriggerClaim("t1", digest, dedup=False)) for _ in range(3)]
    assert None not in loose
    assert store.create_run(_workflow(), {}, trigger=TriggerClaim("t2", digest, dedup=True)) is not None
    assert store.create_run(_workflow(), {}, trigger=TriggerClaim("t1", "b" * 64, dedup=True)) is not None
    assert store.count_runs() == 6


def test_cron_due_time_is_claimed_once(store: RunStore) -> None:
    with store.db.session() as s:
        schedule = CronSchedule(workflow_name="store_wf", cron_expression="*/5 * * * *")
        s.add(schedule)
        s.flush()
        schedule_id = schedule.id
    due = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    first = store.create_run(_workflow(), {}, cron=CronClaim(schedule_id, due))
    assert first is not None
    assert store.create_run(_workflow(), {}, cron=CronClaim(schedule_id, due)) is None
    assert store.count_runs() == 1
    # A cron claim stays taken after its run ends; the next due time is a new claim.
    store.finish_run(first, RunStatus.COMPLETED, {}, None)
    assert store.create_run(_workflow(), {}, cron=CronClaim(schedule_id, due)) is None
    assert store.create_run(_workflow(), {}, cron=CronClaim(schedule_id, due + timedelta(minutes=5))) is not None
    with store.db.session() as s:
        times = s.scalars(select(CronExecution.scheduled_time).order_by(CronExecution.scheduled_time)).all()
    assert times == [due, due + timedelta(minutes=5)]


def test_timestamps_are_aware_utc(store: RunStore) -> None:
    run_id = _running(store)
    store.complete_attempt(run_id, "extract", 1, {})
    store.finish_run(run_id, RunStatus.COMPLETED, {}, None)
    run = store.get_run(run_id)
    assert run is not None
    attempt = store.get_attempts(run_id, "extract")[0]
    stamps = [run.created_at, run.started_at, run.completed_at, attempt.started_at, attempt.completed_at]
    for stamp in stamps:
        assert stamp is not None and stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - run.created_at) < timedelta(minutes=5)
    # An aware time in another zone is stored as the same instant and read back in UTC; a naive one is refused.
    cest = datetime(2026, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    with store.db.session() as s:
        s.execute(update(WorkflowRun).where(WorkflowRun.id == run_id).values(started_at=cest))
    started = store.get_run(run_id).started_at  # type: ignore[union-attr]
    assert started == cest and started.utcoffset() == timedelta(0) and started.hour == 12
    with store.db.session() as s, pytest.raises(StatementError, match="naive datetime"):
        s.execute(update(WorkflowRun).where(WorkflowRun.id == run_id).values(started_at=datetime(2026, 1, 1)))


# -- PostgreSQL only ----------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_racing_dedup_claims_create_exactly_one_run(pg_schema: str) -> None:
    db = Database(PG_URL, schema=pg_schema)
    db.upgrade()
    store = RunStore(db)
    wf = _workflow()
    claim = TriggerClaim("racer", "c" * 64, dedup=True)
    barrier = threading.Barrier(8)
    results: list[str | None] = []
    errors: list[BaseException] = []

    def race() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(store.create_run(wf, {"order_id": 7}, trigger=claim))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert errors == []
        assert len(results) == 8
        assert len([r for r in results if r is not None]) == 1
        assert store.count_runs() == 1 and _count(store, TriggerExecution) == 1
    finally:
        db.dispose()


@pytest.fixture
def second_pg_schema(pg_schema: str) -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield schema
    engine = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.mark.postgres
def test_with_schema_isolates_tenants(pg_schema: str, second_pg_schema: str) -> None:
    _workflow("tenant_wf")
    config = cloaca.DefaultRunnerConfig(enable_trigger_scheduling=False, enable_cron_scheduling=False)
    with (
        cloaca.DefaultRunner.with_schema_config(PG_URL, pg_schema, config) as tenant_a,
        cloaca.DefaultRunner.with_schema_config(PG_URL, second_pg_schema, config) as tenant_b,
    ):
        result = tenant_a.execute("tenant_wf", {"tenant": "a"})
        assert result.status == "Completed"
        assert tenant_a.runs.count_runs() == 1
        assert tenant_b.runs.count_runs() == 0
        assert tenant_b.get_run(result.run_id) is None
        assert tenant_b.execute("tenant_wf", {"tenant": "b"}).final_context.get("tenant") == "b"
        assert [r.input_context for r in tenant_a.runs.list_runs()] == [{"tenant": "a"}]
        assert tenant_a.db.table_names() == tenant_b.db.table_names()
        assert "workflow_runs" in tenant_a.db.table_names()
