"""PostgreSQL's single-statement transitions (cloacina.store.run_fast_path): one statement to start an attempt,
one to finish it while the run has not changed since the start, a correct fallback when it has.

Real PostgreSQL, a schema per test. Statement counts are read with SQLAlchemy's cursor events.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from conftest import PG_URL
from support import sent_statements

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store import run_fast_path as fast
from cloacina.store.database import Database
from cloacina.store.recovery import LostAttempt, RecoveryStore
from cloacina.store.runs import RunStore, StartedAttempt, TriggerClaim
from cloacina.timestamps import utcnow

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_store: RunStore) -> RunStore:
    return pg_store


def _chain() -> Workflow:
    with cloaca.WorkflowBuilder("fast_chain") as builder:
        for name, deps in (("a", []), ("b", ["a"]), ("c", ["b"])):
            cloaca.task(id=name, dependencies=deps)(lambda ctx: ctx)
    return registry.get_workflow(builder.name)


def _diamond() -> Workflow:
    with cloaca.WorkflowBuilder("fast_diamond") as builder:
        for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
            cloaca.task(id=name, dependencies=deps)(lambda ctx: ctx)
    return registry.get_workflow(builder.name)


class Statements:
    """Counts the statements sent to PostgreSQL while active (see :func:`support.sent_statements`)."""

    def __init__(self, store: RunStore) -> None:
        self._capture = sent_statements()
        self.sent: list[str] = []

    def __enter__(self) -> Statements:
        self.sent = self._capture.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._capture.__exit__(*exc)


def _start(store: RunStore, run_id: str, task_id: str) -> StartedAttempt:
    started = store.start_attempt(run_id, task_id, worker="w")
    assert started is not None and started.basis is not None
    return started


def test_a_chain_takes_one_statement_per_start_and_per_finish(store: RunStore) -> None:
    wf = _chain()
    opened = store.open_run(wf, {"n": 1}, trigger=TriggerClaim("t", "h" * 64, dedup=True, lock_token="tok"))
    assert opened is not None and opened.transition.ready == ("a",)
    run_id = opened.run_id
    for task_id, successor in (("a", ("b",)), ("b", ("c",)), ("c", ())):
        with Statements(store) as start:
            started = _start(store, run_id, task_id)
        with Statements(store) as finish:
            step = store.complete_attempt(run_id, task_id, started.attempt, {"n": 1, task_id: True}, wf, started.basis)
        assert (len(start.sent), len(finish.sent)) == (1, 1), (start.sent, finish.sent)
        assert step.applied and step.ready == successor
    assert step.ended is not None and step.ended.status == RunStatus.COMPLETED
    assert (step.ended.trigger_name, step.ended.lock_token) == ("t", "tok")  # the dedup key freed with the run
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.COMPLETED
    assert run.final_context == {"n": 1, "c": True}
    assert store.create_run(wf, {}, trigger=TriggerClaim("t", "h" * 64, dedup=True)) is not None
    attempts = [a.status for tid in "abc" for a in store.get_attempts(run_id, tid)]
    assert attempts == ["Completed"] * 3


def test_siblings_finishing_one_after_the_other_schedule_the_fan_in_once(store: RunStore) -> None:
    wf = _diamond()
    opened = store.open_run(wf, {})
    assert opened is not None
    a = _start(store, opened.run_id, "a")
    assert store.complete_attempt(opened.run_id, "a", 1, {"a": 1}, wf, a.basis).ready == ("b", "c")
    b, c = _start(store, opened.run_id, "b"), _start(store, opened.run_id, "c")
    first = store.complete_attempt(opened.run_id, "b", 1, {"b": 1}, wf, b.basis)
    assert first.applied and first.ready == ()  # c was still running in b's view: d waits
    with Statements(store) as finish:
        second = store.complete_attempt(opened.run_id, "c", 1, {"c": 1}, wf, c.basis)
    assert second.applied and second.ready == ("d",)  # c's view was stale: it planned under the lock instead
    assert len(finish.sent) > 1
    d = _start(store, opened.run_id, "d")
    assert d.input_context == {"b": 1, "c": 1}
    last = store.complete_attempt(opened.run_id, "d", 1, {"d": 1}, wf, d.basis)
    assert last.ended is not None and last.ended.status == RunStatus.COMPLETED


@pytest.mark.parametrize("rounds", [20])
def test_siblings_finishing_at_once_schedule_the_fan_in_exactly_once(store: RunStore, rounds: int) -> None:
    wf = _diamond()
    for _ in range(rounds):
        opened = store.open_run(wf, {})
        assert opened is not None
        a = _start(store, opened.run_id, "a")
        store.complete_attempt(opened.run_id, "a", 1, {}, wf, a.basis)
        started = {tid: _start(store, opened.run_id, tid) for tid in ("b", "c")}
        barrier = threading.Barrier(2)
        ready: dict[str, tuple[str, ...]] = {}
        threads = [
            threading.Thread(
                target=_finish_together, args=(store, wf, opened.run_id, started[tid], tid, barrier, ready)
            )
            for tid in ("b", "c")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(ready.values()) == [(), ("d",)], ready
        assert store.get_tasks(opened.run_id)["d"].status == TaskStatus.READY


def _finish_together(
    store: RunStore,
    wf: Workflow,
    run_id: str,
    started: StartedAttempt,
    task_id: str,
    barrier: threading.Barrier,
    ready: dict[str, tuple[str, ...]],
) -> None:
    barrier.wait()
    ready[task_id] = store.complete_attempt(run_id, task_id, 1, {task_id: 1}, wf, started.basis).ready


def test_a_lost_attempt_given_back_meanwhile_is_not_recorded(store: RunStore) -> None:
    wf = _chain()
    opened = store.open_run(wf, {})
    assert opened is not None
    started = _start(store, opened.run_id, "a")
    recovery = RecoveryStore(store.db)
    lost = LostAttempt(opened.run_id, "a", started.attempt, utcnow() - timedelta(minutes=5))
    assert recovery.requeue_lost(lost, utcnow(), max_lost=3) == "requeued"
    late = store.complete_attempt(opened.run_id, "a", started.attempt, {"late": True}, wf, started.basis)
    assert not late.applied  # the sweeper gave the attempt back: its late result loses
    tasks = store.get_tasks(opened.run_id)
    assert tasks["a"].status == TaskStatus.READY and tasks["b"].status == TaskStatus.NOT_STARTED
    again = _start(store, opened.run_id, "a")
    assert again.attempt == 2
    done = store.complete_attempt(opened.run_id, "a", 2, {"ok": True}, wf, again.basis)
    assert done.applied and done.ready == ("b",)


def _guarded_chain() -> Workflow:
    """``a -> b -> c`` where each runs only if its predecessor succeeded (the default rule would run them)."""
    with cloaca.WorkflowBuilder("fast_guarded") as builder:
        cloaca.task(id="a")(lambda ctx: ctx)
        cloaca.task(id="b", dependencies=["a"], trigger_rules=cloaca.task_success("a"))(lambda ctx: ctx)
        cloaca.task(id="c", dependencies=["b"], trigger_rules=cloaca.task_success("b"))(lambda ctx: ctx)
    return registry.get_workflow(builder.name)


def test_a_final_failure_readies_downstream_by_default(store: RunStore) -> None:
    wf = _chain()
    opened = store.open_run(wf, {})
    assert opened is not None
    started = _start(store, opened.run_id, "a")
    step = store.fail_attempt(opened.run_id, "a", 1, "ValueError: boom", "error", None, wf, started.basis)
    assert step.ended is None and step.ready == ("b",)


def test_a_final_failure_skips_guarded_downstream_and_ends_the_run_in_one_statement(store: RunStore) -> None:
    wf = _guarded_chain()
    opened = store.open_run(wf, {})
    assert opened is not None
    started = _start(store, opened.run_id, "a")
    with Statements(store) as finish:
        step = store.fail_attempt(opened.run_id, "a", 1, "ValueError: boom", "error", None, wf, started.basis)
    assert len(finish.sent) == 1
    assert step.ended is not None and step.ended.status == RunStatus.FAILED
    run = store.get_run(opened.run_id)
    assert run is not None and run.error_message == "task failed: a: ValueError: boom"
    tasks = store.get_tasks(opened.run_id)
    assert [tasks[t].status for t in "abc"] == [TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.SKIPPED]


def test_a_retry_records_the_delay_and_plans_nothing(store: RunStore) -> None:
    wf = _chain()
    opened = store.open_run(wf, {})
    assert opened is not None
    started = _start(store, opened.run_id, "a")
    later = utcnow() + timedelta(seconds=30)
    step = store.fail_attempt(opened.run_id, "a", 1, "TimeoutError: slow", "transient", later, wf, started.basis)
    assert step.applied and step.ready == () and step.ended is None
    task = store.get_tasks(opened.run_id)["a"]
    assert task.status == TaskStatus.READY and task.next_attempt_at is not None
    assert store.start_attempt(opened.run_id, "a") is None  # not due yet


def test_an_ended_run_refuses_starts_and_finishes(store: RunStore) -> None:
    wf = _chain()
    opened = store.open_run(wf, {})
    assert opened is not None
    started = _start(store, opened.run_id, "a")
    assert store.finish_run(opened.run_id, RunStatus.FAILED, None, "timed out") is not None
    assert not store.complete_attempt(opened.run_id, "a", 1, {}, wf, started.basis).applied
    assert store.start_attempt(opened.run_id, "b") is None


def test_generic_plans_reach_every_row_through_an_index(pg_schema: str) -> None:
    """psycopg prepares a statement after a few runs and PostgreSQL then may cache one generic plan for the
    connection's life, made while the tables were small. The hot statements must still find their rows through
    an index: a finish once rescanned all of ``task_attempts`` every time (a semi-join the generic plan made a
    sequential scan). auto_explain reports each executed plan to this connection as a notice."""
    db = Database(PG_URL, schema=pg_schema)
    db.upgrade()
    store = RunStore(db)
    wf = _chain()
    plans: list[str] = []
    try:
        with db.single_statement() as c:
            driver = c.connection.driver_connection
            assert driver is not None
            driver.prepare_threshold = 0  # prepare at once
            for setting in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_level = 'notice'",
                "SET plan_cache_mode = force_generic_plan",
            ):
                c.exec_driver_sql(setting)
            driver.add_notice_handler(lambda diag: plans.append(str(diag.message_primary)))
            for n in range(3):
                opened = store.open_run(wf, {"n": n})
                assert opened is not None
                for task_id in ("a", "b", "c"):
                    started = fast.start_attempt(c, opened.run_id, task_id, "w", utcnow())
                    assert started is not None and started.basis is not None
                    outcome = fast.AttemptOutcome(TaskStatus.COMPLETED, {"n": n})
                    _, complete = fast.finish_attempt(
                        c, opened.run_id, task_id, started.attempt, outcome, started.basis, wf, utcnow()
                    )
                    assert complete
            c.exec_driver_sql("RESET ALL")
    finally:
        db.dispose()
    assert len([p for p in plans if "task_attempts" in p]) >= 18, plans  # every start and finish was explained
    scans = [p for p in plans if "Seq Scan on" in p and ("task_" in p or "workflow_runs" in p)]
    assert not scans, scans[0]
