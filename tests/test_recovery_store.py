"""Contract suite of :class:`cloacina.store.recovery.RecoveryStore` (the sweeper's queries), on every backend.

Lost attempts go back to Ready, and fail after ``max_lost`` losses; stale runs are claimed by one sweeper only;
runs past their deadline are found with the timeout they had, while runs without a deadline, with one still
ahead, or already finished are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.database import Database
from cloacina.store.recovery import RecoveryStore
from cloacina.store.runs import RunStore
from cloacina.timestamps import utcnow
from tests.conftest import Backend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stores(backend: Backend) -> Iterator[tuple[RunStore, RecoveryStore]]:
    db = Database(backend.url, schema=backend.schema)
    db.upgrade()
    yield RunStore(db), RecoveryStore(db)
    db.dispose()


def _workflow() -> Workflow:
    with cloaca.WorkflowBuilder("recovery_store_wf") as builder:

        @cloaca.task(id="only")
        def only(ctx: cloaca.Context) -> cloaca.Context:
            return ctx

    return registry.get_workflow(builder.name)


def _new_run(runs: RunStore, workflow: Workflow, deadline_s: float | None = None) -> str:
    run_id = runs.create_run(workflow, {}, deadline_s=deadline_s)
    assert run_id is not None
    assert runs.advance(run_id, workflow).ready == ("only",)
    return run_id


def test_expired_runs_are_those_past_their_deadline_with_the_timeout_they_had(
    stores: tuple[RunStore, RecoveryStore],
) -> None:
    runs, recovery = stores
    wf = _workflow()
    no_deadline = _new_run(runs, wf)
    expiring = _new_run(runs, wf, deadline_s=30)
    later = _new_run(runs, wf, deadline_s=3600)
    ended = _new_run(runs, wf, deadline_s=30)
    assert runs.finish_run(ended, RunStatus.FAILED, None, "cancelled") is not None

    assert recovery.expired_runs(utcnow()) == []
    expired = recovery.expired_runs(utcnow() + timedelta(seconds=60))
    assert [run_id for run_id, _ in expired] == [expiring]
    assert expired[0][1] == pytest.approx(30.0)
    assert {no_deadline, later}.isdisjoint(run_id for run_id, _ in expired)


def test_a_lost_attempt_is_requeued_once_and_fails_after_max_losses(stores: tuple[RunStore, RecoveryStore]) -> None:
    runs, recovery = stores
    wf = _workflow()
    run_id = _new_run(runs, wf)
    for expected in ("requeued", "failed"):
        started = runs.start_attempt(run_id, "only", worker="w1")
        assert started is not None
        later = utcnow() + timedelta(seconds=60)
        assert recovery.lost_attempts(utcnow() - timedelta(seconds=60)) == []
        [lost] = recovery.lost_attempts(later)
        assert (lost.run_id, lost.task_id, lost.attempt) == (run_id, "only", started.attempt)
        assert recovery.requeue_lost(lost, later, max_lost=2) == expected
        assert recovery.requeue_lost(lost, later, max_lost=2) is None  # a second sweeper loses
    task = runs.get_tasks(run_id)["only"]
    assert task.status == TaskStatus.FAILED
    assert "worker lost 2 times" in (task.error_message or "")


def test_a_stale_run_is_claimed_by_one_sweeper(stores: tuple[RunStore, RecoveryStore]) -> None:
    runs, recovery = stores
    run_id = _new_run(runs, _workflow())
    now = utcnow()
    assert recovery.stale_runs(now - timedelta(seconds=60), now) == []
    later = now + timedelta(seconds=60)
    [stale] = recovery.stale_runs(later, later)
    assert (stale.run_id, stale.workflow_name, stale.deadline_at) == (run_id, "recovery_store_wf", None)
    assert recovery.claim_stale_run(stale, later) is True
    assert recovery.claim_stale_run(stale, later) is False  # its heartbeat moved: the compare-and-set fails
