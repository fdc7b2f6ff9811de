"""Run creation plans the roots in the same transaction: the first delivery of a run finds its task Ready.

Checked on every backend (SQLite in memory and on file, PostgreSQL) through the real store.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.database import Database
from cloacina.store.runs import RunStore, TriggerClaim


@pytest.fixture
def store(backend) -> Iterator[RunStore]:  # type: ignore[no-untyped-def]
    db = Database(backend.url, schema=backend.schema)
    db.upgrade()
    yield RunStore(db)
    db.dispose()


def _workflow(name: str, *, gate_rule: bool = False) -> Workflow:
    """``a`` and ``b`` are roots; ``c`` needs both. With ``gate_rule`` each task runs only when ``go`` is true."""
    rule = cloaca.context_value("go", "==", True) if gate_rule else None
    with cloaca.WorkflowBuilder(name) as builder:

        @cloaca.task(id="a", trigger_rules=rule)
        def a(ctx):
            return ctx

        @cloaca.task(id="b", trigger_rules=rule)
        def b(ctx):
            return ctx

        @cloaca.task(id="c", dependencies=["a", "b"], trigger_rules=rule)
        def c(ctx):
            return ctx

    return registry.get_workflow(builder.name)


def test_open_run_writes_the_roots_ready_with_their_input(store: RunStore) -> None:
    opened = store.open_run(_workflow("plan_at_creation"), {"n": 1})
    assert opened is not None
    assert opened.transition.ready == ("a", "b") and opened.transition.ended is None
    tasks = store.get_tasks(opened.run_id)
    assert {tid: t.status for tid, t in tasks.items()} == {
        "a": TaskStatus.READY,
        "b": TaskStatus.READY,
        "c": TaskStatus.NOT_STARTED,
    }
    assert tasks["a"].input_context == {"n": 1}
    started = store.start_attempt(opened.run_id, "a")  # the first delivery starts at once, no planning step
    assert started is not None and started.attempt == 1 and started.input_context == {"n": 1}


def test_a_run_whose_every_task_is_skipped_ends_at_creation(store: RunStore) -> None:
    opened = store.open_run(_workflow("all_skipped", gate_rule=True), {"go": False})
    assert opened is not None and opened.transition.ready == ()
    ended = opened.transition.ended
    assert ended is not None and ended.status == RunStatus.COMPLETED
    run = store.get_run(opened.run_id)
    assert run is not None and run.status == RunStatus.COMPLETED and run.completed_at is not None
    assert {t.status for t in store.get_tasks(opened.run_id).values()} == {TaskStatus.SKIPPED}


def test_a_refused_claim_writes_nothing_and_frees_at_the_end(store: RunStore) -> None:
    wf = _workflow("claimed_at_creation")
    claim = TriggerClaim("t", "h" * 64, dedup=True)
    first = store.open_run(wf, {}, trigger=claim)
    assert first is not None
    assert store.open_run(wf, {}, trigger=claim) is None
    assert store.count_runs() == 1
    other = TriggerClaim("u", "h" * 64, dedup=True)
    skipped = store.open_run(_workflow("claimed_skips", gate_rule=True), {}, trigger=other)
    assert skipped is not None and skipped.transition.ended is not None  # ended at once: its key is free again
    assert store.open_run(_workflow("claimed_skips"), {}, trigger=other) is not None


def test_the_coordinator_hands_the_planned_roots_to_its_dispatcher(store: RunStore) -> None:
    from cloacina.execution.coordinator import RunCoordinator
    from cloacina.execution.dispatcher import PlanOnly

    started: list[tuple[str, tuple[str, ...]]] = []

    class Recording(PlanOnly):
        def start_run(self, run_id: str, workflow: Workflow, ready: tuple[str, ...]) -> None:
            started.append((run_id, ready))

    wf = _workflow("coordinated")
    coordinator = RunCoordinator(store, lambda *_: wf, dispatcher=Recording())
    run_id = coordinator.create_run(wf, {"n": 2})
    assert started == [(run_id, ("a", "b"))]
