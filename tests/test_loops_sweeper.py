"""One pass of the sweeper (``Sweeper.run_once``) at a time, on every backend, with an injected clock.

Heartbeats and run timestamps are written by the real store at the real time; the sweeper's clock is then moved
past them (``FakeClock``), so an attempt "goes silent" or a run "goes stale" without any waiting. Republishing goes
to a callback that records the run (and, where the test says so, plans it as a worker would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from cloacina.definitions import registry
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling.sweeper import Sweeper
from cloacina.store.database import Database
from cloacina.store.models import TaskRun, utcnow
from cloacina.store.recovery import RecoveryStore
from cloacina.store.runs import RunStore
from tests.conftest import Backend
from tests.support import FakeClock, declare_one_task_workflow

TIMEOUT_S = 30.0


class Stack:
    """A store, a coordinator, a sweeper clock starting now, and the runs the sweeper republished."""

    def __init__(self, backend: Backend) -> None:
        self.db = Database(backend.url, schema=backend.schema)
        self.db.upgrade()
        self.runs = RunStore(self.db)
        self.coordinator = RunCoordinator(self.runs, lambda name, *_: registry.get_workflow(name))
        self.clock: FakeClock[datetime] = FakeClock(utcnow())
        self.republished: list[str] = []

    def sweeper(self, republish: Callable[[str], None] | None = None, **kwargs: Any) -> Sweeper:
        kwargs.setdefault("heartbeat_timeout_s", TIMEOUT_S)
        kwargs.setdefault("stale_run_s", TIMEOUT_S)
        return Sweeper(
            RecoveryStore(self.db), self.coordinator, republish or self.republished.append, clock=self.clock, **kwargs
        )

    def new_run(self, workflow: str = "wf", **kwargs: Any) -> str:
        run_id = self.coordinator.create_run(registry.get_workflow(workflow), {"n": 1}, **kwargs)
        assert run_id is not None
        return run_id

    def start(self, run_id: str, task_id: str = "only") -> int:
        """A worker takes the task (Running, heartbeat now) and then dies without a word."""
        started = self.runs.start_attempt(run_id, task_id, worker="dead-worker:1")
        assert started is not None
        return started.attempt

    def beat_at(self, run_id: str, at: datetime, task_id: str = "only") -> None:
        """Set the task's heartbeat to ``at`` (the store writes heartbeats at the real time)."""
        with self.db.session() as s:
            s.execute(
                update(TaskRun).where(TaskRun.run_id == run_id, TaskRun.task_id == task_id).values(heartbeat_at=at)
            )

    def task(self, run_id: str, task_id: str = "only") -> Any:
        return self.runs.get_tasks(run_id)[task_id]

    def run_status(self, run_id: str) -> str:
        run = self.runs.get_run(run_id)
        assert run is not None
        return str(run.status)


@pytest.fixture
def stack(backend: Backend) -> Iterator[Stack]:
    opened = Stack(backend)
    yield opened
    opened.db.dispose()


@pytest.fixture(autouse=True)
def workflow() -> None:
    declare_one_task_workflow()


# -- lost attempts -------------------------------------------------------------------------------------------------
def test_an_attempt_with_a_stale_heartbeat_is_requeued_and_its_run_republished(stack: Stack) -> None:
    run_id = stack.new_run()
    stack.start(run_id)
    sweeper = stack.sweeper()
    stack.clock.advance(TIMEOUT_S - 1)  # silent, but not for a whole timeout yet
    assert not sweeper.run_once()
    assert str(stack.task(run_id).status) == "Running"

    stack.clock.advance(2)
    report = sweeper.run_once()
    assert report.requeued == [run_id] and report.failed == [] and report.republished == [run_id]
    assert stack.republished == [run_id]
    task = stack.task(run_id)
    assert (str(task.status), task.attempt, task.next_attempt_at) == ("Ready", 1, None)
    (attempt,) = stack.runs.get_attempts(run_id, "only")
    assert attempt.status == "Lost" and attempt.error_kind == "transient"
    assert "no heartbeat" in (attempt.error_message or "")

    assert not sweeper.run_once()  # dealt with: the next pass finds nothing (the run's heartbeat moved too)
    assert stack.coordinator.run_task(run_id, "only").kind == "completed"  # runs again elsewhere
    assert stack.run_status(run_id) == "Completed"


def test_a_live_heartbeat_keeps_the_attempt(stack: Stack) -> None:
    run_id = stack.new_run()
    attempt = stack.start(run_id)
    sweeper = stack.sweeper()
    for _ in range(4):  # the worker beats every 20 s (of the sweeper's clock); the sweeper passes 10 s after each
        stack.clock.advance(20)
        assert stack.runs.heartbeat([(run_id, "only", attempt)]) == 1
        stack.beat_at(run_id, stack.clock.now)  # that beat, as of the sweeper's clock
        stack.clock.advance(10)
        assert not sweeper.run_once()
    assert str(stack.task(run_id).status) == "Running" and stack.republished == []  # 120 s in: alive
    stack.clock.advance(TIMEOUT_S - 10 + 1)  # then the beats stop
    assert sweeper.run_once().requeued == [run_id]


def test_a_task_whose_worker_is_lost_three_times_fails(stack: Stack) -> None:
    run_id = stack.new_run()

    def republish(rid: str) -> None:  # what the worker that gets the republished run does first: plan it
        stack.republished.append(rid)
        stack.coordinator.advance(rid)

    sweeper = stack.sweeper(republish=republish)
    outcomes = []
    for _ in range(3):
        stack.start(run_id)
        stack.clock.advance(TIMEOUT_S + 1)  # each later attempt beat at the real time, far behind the clock
        report = sweeper.run_once()
        outcomes.append("requeued" if report.requeued else "failed" if report.failed else "nothing")
        assert report.republished == [run_id]
    assert outcomes == ["requeued", "requeued", "failed"]
    task = stack.task(run_id)
    assert str(task.status) == "Failed" and task.attempt == 3
    assert "worker lost 3 times" in (task.error_message or "")
    assert [a.status for a in stack.runs.get_attempts(run_id, "only")] == ["Lost"] * 3
    assert stack.run_status(run_id) == "Failed"  # planned by the republish callback: the run ended


def test_max_lost_attempts_is_configurable(stack: Stack) -> None:
    run_id = stack.new_run()
    stack.start(run_id)
    stack.clock.advance(TIMEOUT_S + 1)
    report = stack.sweeper(max_lost_attempts=1).run_once()
    assert report.failed == [run_id] and report.requeued == []


# -- stale and expired runs -----------------------------------------------------------------------------------------
def test_a_run_with_no_progress_is_republished_once(stack: Stack) -> None:
    run_id = stack.new_run()  # root task Ready, but its message was lost: nobody will ever run it
    sweeper = stack.sweeper()
    stack.clock.advance(TIMEOUT_S - 1)
    assert not sweeper.run_once()
    stack.clock.advance(2)
    report = sweeper.run_once()
    assert report.republished == [run_id] and report.requeued == [] and report.expired == []
    assert stack.republished == [run_id]
    assert not sweeper.run_once()  # claimed: its heartbeat moved to the sweep time
    stack.clock.advance(TIMEOUT_S + 1)
    assert sweeper.run_once().republished == [run_id]  # still no progress after another period: again


def test_a_run_waiting_for_a_retry_delay_is_not_stale(stack: Stack) -> None:
    run_id = stack.new_run()
    attempt = stack.start(run_id)
    retry_at = stack.clock.now + timedelta(seconds=10 * TIMEOUT_S)  # a long retry delay
    assert stack.runs.fail_attempt(run_id, "only", attempt, "ValueError: x", "transient", retry_at).applied
    stack.clock.advance(TIMEOUT_S + 1)
    assert not stack.sweeper().run_once()
    assert stack.republished == []


def test_a_run_past_its_deadline_is_failed(stack: Stack) -> None:
    run_id = stack.new_run(deadline_s=10)
    other = stack.new_run()
    sweeper = stack.sweeper()
    stack.clock.advance(9)
    assert not sweeper.run_once()
    stack.clock.advance(2)
    report = sweeper.run_once()
    assert report.expired == [run_id]
    run = stack.runs.get_run(run_id)
    assert run is not None and str(run.status) == "Failed"
    assert "workflow timed out after 10s" in (run.error_message or "")
    assert stack.run_status(other) == "Pending"  # no deadline: untouched
    assert not sweeper.run_once()  # ended: not expired twice


def test_a_completed_run_is_never_touched(stack: Stack) -> None:
    run_id = stack.new_run()
    assert stack.coordinator.run_task(run_id, "only").kind == "completed"
    stack.clock.advance(10 * TIMEOUT_S)
    assert not stack.sweeper().run_once()
    assert stack.run_status(run_id) == "Completed" and stack.republished == []


# -- turns and outages -----------------------------------------------------------------------------------------------
def test_nothing_is_done_when_it_is_not_this_replicas_turn(stack: Stack) -> None:
    lost = stack.new_run()
    stack.start(lost)
    stale = stack.new_run()
    expired = stack.new_run(deadline_s=1)
    turns: list[bool] = []

    def may_sweep() -> bool:
        turns.append(False)
        return False

    stack.clock.advance(TIMEOUT_S + 1)
    assert not stack.sweeper(may_sweep=may_sweep).run_once()
    assert turns == [False] and stack.republished == []
    assert str(stack.task(lost).status) == "Running"
    assert stack.run_status(stale) == "Pending" and stack.run_status(expired) == "Pending"
    report = stack.sweeper(may_sweep=lambda: True).run_once()  # the replica whose turn it is
    assert report.requeued == [lost] and report.expired == [expired] and stale in report.republished


def test_after_a_database_outage_heartbeats_are_trusted_only_after_a_full_timeout(stack: Stack) -> None:
    run_id = stack.new_run()
    stack.start(run_id)
    sweeper = stack.sweeper()
    stack.clock.advance(TIMEOUT_S + 1)  # silent for longer than the timeout: lost, were it not for the outage
    sweeper.store_unavailable()  # workers could not write heartbeats meanwhile either
    assert not sweeper.run_once()  # the database is back now: the timeout starts counting from here
    stack.clock.advance(TIMEOUT_S - 1)
    assert not sweeper.run_once()
    assert str(stack.task(run_id).status) == "Running"
    stack.clock.advance(1)  # a full timeout after the database came back, still no heartbeat: lost
    assert sweeper.run_once().requeued == [run_id]


def test_runs_past_deadline_are_failed_even_right_after_an_outage(stack: Stack) -> None:
    run_id = stack.new_run(deadline_s=1)
    sweeper = stack.sweeper()
    stack.clock.advance(2)
    sweeper.store_unavailable()
    assert sweeper.run_once().expired == [run_id]  # only lost-attempt detection waits for trust in heartbeats


def test_a_failing_republish_is_retried_on_the_next_sweep(stack: Stack) -> None:
    run_id = stack.new_run()
    failures = [RuntimeError("broker down")]

    def republish(rid: str) -> None:
        if failures:
            raise failures.pop()
        stack.republished.append(rid)

    sweeper = stack.sweeper(republish=republish)
    stack.clock.advance(TIMEOUT_S + 1)
    assert sweeper.run_once().republished == []  # claimed, but the publish failed (logged)
    stack.clock.advance(TIMEOUT_S + 1)
    assert sweeper.run_once().republished == [run_id]
    assert stack.republished == [run_id]
