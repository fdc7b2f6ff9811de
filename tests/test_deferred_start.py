"""Deferred attempt starts on PostgreSQL (cloacina.execution.deferred_start): a short task costs one write, its
finish; a longer one, or one that defers, is ``Running`` in SQL while it runs; of two deliveries of one task only one
finish applies; a cancel that meets an unrecorded attempt is recorded as it would have been; a redelivered message
records its start before the task runs.

Real PostgreSQL, a schema per test; the coordinator drives attempts by hand (no executor).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from support import sent_statements, wait_until

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.execution.coordinator import RunCoordinator
from cloacina.execution.heartbeat import AttemptHeartbeats
from cloacina.store.runs import RunStore

pytestmark = pytest.mark.postgres
WAIT_S = 20


@pytest.fixture
def store(pg_store: RunStore) -> RunStore:
    return pg_store


def _coordinator(store: RunStore, heartbeat_s: float | None = None) -> RunCoordinator:
    beats = AttemptHeartbeats(store, heartbeat_s) if heartbeat_s is not None else None
    return RunCoordinator(
        store,
        lambda name, version, fingerprint: registry.get_workflow(name),
        worker_name="host:1",
        track_attempt=beats.track if beats is not None else None,
    )


def _one_task(name: str, body: Callable[..., Any]) -> Any:
    with cloaca.WorkflowBuilder(name) as builder:
        cloaca.task(id="t")(body)
    return registry.get_workflow(builder.name)


def _task_status(store: RunStore, run_id: str) -> str:
    return str(store.get_tasks(run_id)["t"].status)


def _gated(gate: threading.Event, entered: list[str]) -> Callable[[Any], Any]:
    def body(ctx: Any) -> Any:
        entered.append(threading.current_thread().name)
        assert gate.wait(WAIT_S)
        return ctx

    return body


def test_a_short_task_costs_one_write_its_finish(store: RunStore) -> None:
    wf = _one_task("ds_short", lambda ctx: ctx)
    coordinator = _coordinator(store, heartbeat_s=5.0)
    run_id = coordinator.create_run(wf, {"n": 1})
    assert run_id is not None
    with sent_statements() as sent:
        outcome = coordinator.run_task(run_id, "t")
    assert outcome.kind == "completed"
    writes = [s for s in sent if not s.startswith("SELECT")]
    assert len(sent) == 2 and len(writes) == 1, sent  # the peek (a read) and the finish that records the start
    (attempt,) = store.get_attempts(run_id, "t")
    assert (attempt.attempt, attempt.status) == (1, "Completed")
    with store.db.engine.connect() as c:
        assert c.exec_driver_sql("SELECT worker FROM task_attempts").scalar_one() == "host:1"
    assert attempt.started_at is not None and attempt.completed_at is not None
    assert attempt.started_at <= attempt.completed_at
    run = store.get_run(run_id)
    assert run is not None and str(run.status) == "Completed" and run.started_at is not None
    task = store.get_tasks(run_id)["t"]
    assert task.started_at is not None and task.attempt == 1


def test_a_longer_task_is_running_in_sql_while_it_runs(store: RunStore) -> None:
    gate, entered = threading.Event(), []
    wf = _one_task("ds_long", _gated(gate, entered))
    coordinator = _coordinator(store, heartbeat_s=0.2)  # records the start after 0.1 s
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    worker = threading.Thread(target=coordinator.run_task, args=(run_id, "t"))
    worker.start()
    try:
        wait_until(lambda: _task_status(store, run_id) == "Running", WAIT_S, message="the task to be Running")
        assert [a.status for a in store.get_attempts(run_id, "t")] == ["Running"]
        run = store.get_run(run_id)
        assert run is not None and str(run.status) == "Running"
    finally:
        gate.set()
        worker.join(WAIT_S)
    assert [(a.attempt, a.status) for a in store.get_attempts(run_id, "t")] == [(1, "Completed")]


def test_of_two_deliveries_of_one_task_only_one_finish_applies(store: RunStore) -> None:
    gate, entered = threading.Event(), []
    wf = _one_task("ds_twice", _gated(gate, entered))
    coordinator = _coordinator(store)  # no heartbeats: neither delivery records its start before it ends
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    outcomes: list[str] = []
    deliveries = [
        threading.Thread(target=lambda: outcomes.append(coordinator.run_task(run_id, "t").kind)) for _ in range(2)
    ]
    for d in deliveries:
        d.start()
    wait_until(lambda: len(entered) == 2, WAIT_S, message="both deliveries to run the task")
    gate.set()
    for d in deliveries:
        d.join(WAIT_S)
    assert sorted(outcomes) == ["completed", "done"]  # the second finish found the task Completed
    assert [(a.attempt, a.status) for a in store.get_attempts(run_id, "t")] == [(1, "Completed")]
    run = store.get_run(run_id)
    assert run is not None and str(run.status) == "Completed"


def test_a_deferring_task_records_its_start_before_it_gives_its_slot_back(store: RunStore) -> None:
    condition = threading.Event()
    deferring = threading.Event()

    def body(ctx: Any, handle: Any) -> Any:
        deferring.set()
        handle.defer_until(condition.is_set, poll_interval_ms=20)
        return ctx

    wf = _one_task("ds_defer", body)
    coordinator = _coordinator(store)  # no heartbeats: only the defer can record the start
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    worker = threading.Thread(target=coordinator.run_task, args=(run_id, "t"))
    worker.start()
    try:
        assert deferring.wait(WAIT_S)
        wait_until(lambda: _task_status(store, run_id) == "Running", WAIT_S, message="Running while deferring")
    finally:
        condition.set()
        worker.join(WAIT_S)
    assert [(a.attempt, a.status) for a in store.get_attempts(run_id, "t")] == [(1, "Completed")]


def test_a_cancel_that_meets_an_unrecorded_attempt_is_recorded_when_it_returns(store: RunStore) -> None:
    gate, entered = threading.Event(), []
    wf = _one_task("ds_cancel", _gated(gate, entered))
    coordinator = _coordinator(store)
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    worker = threading.Thread(target=coordinator.run_task, args=(run_id, "t"))
    worker.start()
    wait_until(lambda: entered, WAIT_S, message="the task to start")
    assert _task_status(store, run_id) == "Ready"  # its start is not recorded yet
    assert coordinator.cancel_run(run_id) is True
    gate.set()
    worker.join(WAIT_S)
    (attempt,) = store.get_attempts(run_id, "t")
    assert (attempt.attempt, attempt.status, attempt.error_kind) == (1, "Cancelled", "cancelled")
    assert "completed after the cancellation" in (attempt.error_message or "")
    task = store.get_tasks(run_id)["t"]
    assert (str(task.status), task.error_kind) == ("Failed", "cancelled")
    run = store.get_run(run_id)
    assert run is not None and str(run.status) == "Cancelled" and run.final_context is None


def test_a_redelivered_message_records_the_start_before_the_task_runs(store: RunStore) -> None:
    seen: list[str] = []
    wf = _one_task("ds_redelivered", lambda ctx: seen.append(_task_status(store, run_id)) or ctx)
    coordinator = _coordinator(store)
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    assert coordinator.run_node(run_id, "t", record_start=True).kind == "completed"
    assert seen == ["Running"]  # so a worker lost during it leaves a Running attempt the sweeper counts as lost
    assert [(a.attempt, a.status) for a in store.get_attempts(run_id, "t")] == [(1, "Completed")]


def test_a_start_refused_from_the_heartbeat_thread_ends_its_tracking_cleanly(store: RunStore) -> None:
    """The run was cancelled before the heartbeat thread recorded the start: the record is refused, the attempt
    is neither deferred nor beating, and leaving the tracking block does not fail the delivery."""
    from cloacina.execution.deferred_start import DeferredStart
    from cloacina.store.runs import StartedAttempt
    from cloacina.timestamps import utcnow

    beats = AttemptHeartbeats(store, 0.2)
    started = StartedAttempt(1, {}, "wf", "v", None, None, started_at=utcnow(), is_recorded=False)
    start = DeferredStart(started, "host:1", lambda: False)
    with beats.track("run", "t", 1, start):
        wait_until(lambda: not start.is_deferred, WAIT_S, message="the heartbeat thread to try the record")
    assert start.settle() is None  # the finish records no start: it will not apply either
    assert beats.beat_once() == 0  # nothing left to beat
    beats.stop()


def test_a_finish_starts_the_task_its_caller_runs_next(store: RunStore) -> None:
    """A stretch a -> b -> c run as one message: the peek of a, then one statement per task (each finish starts
    the next task); a fan-out's finish starts the first task it readies and hands back the others."""
    from cloacina.store.runs import ContinueWith

    with cloaca.WorkflowBuilder("ds_chain") as builder:
        for name, deps in (("a", []), ("b", ["a"]), ("c", ["b"])):
            cloaca.task(id=name, dependencies=deps)(lambda ctx, _n=name: {**ctx, _n: True})
    wf = registry.get_workflow(builder.name)
    coordinator = _coordinator(store)
    run_id = coordinator.create_run(wf, {"n": 1})
    assert run_id is not None
    started = None
    with sent_statements() as sent:
        for task_id, following in (("a", "b"), ("b", "c"), ("c", None)):
            outcome = coordinator.run_node(run_id, task_id, continue_with=ContinueWith(following), started=started)
            assert outcome.kind == "completed" and outcome.ready == ()
            if following is not None:
                assert outcome.continued is not None and outcome.continued[0] == following
                mark = len(sent)
                assert _status_of(store, run_id, following) == "Running"  # started by the finish, recorded
                del sent[mark:]  # this check's own query
                started = outcome.continued[1]
                assert started.input_context == {"n": 1, **{t: True for t in "ab"[: "abc".index(following)]}}
            else:
                assert outcome.continued is None
    assert len(sent) == 4 and sum(not s.startswith("SELECT") for s in sent) == 3, sent
    run = store.get_run(run_id)
    assert run is not None and str(run.status) == "Completed"
    assert run.final_context == {"n": 1, "a": True, "b": True, "c": True}
    assert [(a.attempt, a.status) for t in "abc" for a in store.get_attempts(run_id, t)] == [(1, "Completed")] * 3

    with cloaca.WorkflowBuilder("ds_fan") as builder:
        for name, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
            cloaca.task(id=name, dependencies=deps)(lambda ctx: ctx)
    fan = registry.get_workflow(builder.name)
    run_id = coordinator.create_run(fan, {})
    assert run_id is not None
    outcome = coordinator.run_node(run_id, "a", continue_with=ContinueWith(None, first_ready=True))
    assert outcome.continued is not None and outcome.continued[0] == "b" and outcome.ready == ("c",)
    assert (_status_of(store, run_id, "b"), _status_of(store, run_id, "c")) == ("Running", "Ready")


def _status_of(store: RunStore, run_id: str, task_id: str) -> str:
    return str(store.get_tasks(run_id)[task_id].status)


def test_a_stale_ready_task_or_a_second_attempt_records_its_start_first(store: RunStore) -> None:
    """Deferring is only for a message that is its task's only one: a task Ready for longer than
    ``defer_start_within_s`` (its run may have been republished as stalled) and any attempt after the first (a
    retry, a lost attempt given back) record their start before the task runs, so of two such deliveries only one
    runs the task."""
    seen: list[str] = []
    wf = _one_task("ds_stale", lambda ctx: seen.append(_task_status(store, run_id)) or ctx)
    coordinator = _coordinator(store)
    coordinator.defer_start_within_s = 0.0  # every Ready task counts as stale
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    assert coordinator.run_task(run_id, "t").kind == "completed"
    assert seen == ["Running"]

    attempts: list[int] = []

    def flaky(ctx: Any) -> Any:
        attempts.append(1)
        seen.append(_task_status(store, run_id))
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return ctx

    with cloaca.WorkflowBuilder("ds_retry") as builder:
        cloaca.task(id="t", retry_attempts=2, retry_delay_ms=1, retry_jitter=False)(flaky)
    retried = registry.get_workflow(builder.name)
    fresh = _coordinator(store)  # a fresh Ready task defers its first attempt
    seen.clear()
    run_id = fresh.create_run(retried, {})
    assert run_id is not None
    assert fresh.run_task(run_id, "t").kind == "retry"
    wait_until(lambda: fresh.run_task(run_id, "t").kind == "completed", WAIT_S, message="the retry")
    assert seen == ["Ready", "Running"]  # the first attempt deferred its start, the second recorded it first
