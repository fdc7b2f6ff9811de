"""RunCoordinator edge cases that involve the process running the task, not the workflow."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.execution.coordinator import UNRESOLVABLE_ATTEMPTS, RunCoordinator
from cloacina.execution.task_handle import UnmanagedSlot, holding_slot
from cloacina.store.database import Database
from cloacina.store.runs import RunStore


def test_a_process_without_the_code_gives_the_task_back_then_fails_it(backend: Any) -> None:
    with cloaca.WorkflowBuilder("needs_code"):
        cloaca.task(id="only")(lambda ctx: ctx)
    workflow = registry.get_workflow("needs_code")
    db = Database(backend.url, schema=backend.schema)
    db.upgrade()
    store = RunStore(db)

    def missing(name: str, *_: Any) -> Any:
        raise ModuleNotFoundError(f"No module named {name!r}")

    creator = RunCoordinator(store, lambda name, *_: registry.get_workflow(name))
    run_id = creator.create_run(workflow, {})
    assert run_id is not None
    without_code = RunCoordinator(store, missing, worker_name="worker-without-app")
    outcomes = []
    for _ in range(UNRESOLVABLE_ATTEMPTS):
        with db.connection() as c:  # let the retry delay pass at once
            c.exec_driver_sql("UPDATE task_runs SET next_attempt_at = NULL")
        outcomes.append(without_code.run_task(run_id, "only").kind)
    assert outcomes == ["retry"] * (UNRESOLVABLE_ATTEMPTS - 1) + ["failed"]
    task = store.get_tasks(run_id)["only"]
    assert str(task.status) == "Failed"
    assert "worker-without-app" in (task.error_message or "") and "No module named" in (task.error_message or "")
    # A process that has the code plans the rest: the run ends Failed, naming the task.
    creator.advance(run_id)
    run = store.get_run(run_id)
    assert run is not None and str(run.status) == "Failed" and "only" in (run.error_message or "")
    db.dispose()


class _FlakyStore(RunStore):
    """The real store, whose first completion write fails as if the database connection had just dropped."""

    failures = 1

    def complete_attempt(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise OperationalError("UPDATE task_runs ...", {}, Exception("server closed the connection"))
        return super().complete_attempt(*args, **kwargs)


def test_an_outcome_is_recorded_through_a_brief_database_outage(backend: Any) -> None:
    with cloaca.WorkflowBuilder("flaky_write"):
        cloaca.task(id="only")(lambda ctx: ctx)
    db = Database(backend.url, schema=backend.schema)
    db.upgrade()
    store = _FlakyStore(db)
    coordinator = RunCoordinator(store, lambda name, *_: registry.get_workflow(name))
    run_id = coordinator.create_run(registry.get_workflow("flaky_write"), {"n": 1})
    assert run_id is not None
    assert coordinator.run_task(run_id, "only").kind == "completed"
    assert store.failures == 0
    attempts = store.get_attempts(run_id, "only")
    assert [a.status for a in attempts] == ["Completed"]  # recorded, not run again
    run = store.get_run(run_id)
    assert run is not None and str(run.status) == "Completed"
    db.dispose()


def _coordinator(backend: Any) -> tuple[Database, RunStore, RunCoordinator]:
    db = Database(backend.url, schema=backend.schema)
    db.upgrade()
    store = RunStore(db)
    return db, store, RunCoordinator(store, lambda name, *_: registry.get_workflow(name))


def test_a_failed_attempt_is_handed_back_with_the_policy_delay_until_attempts_run_out(backend: Any) -> None:
    with cloaca.WorkflowBuilder("two_tries"):

        @cloaca.task(id="only", retry_attempts=2, retry_backoff="fixed", retry_delay_ms=250, retry_jitter=False)
        def only(ctx: Any) -> Any:
            raise TimeoutError("upstream timeout")

    db, store, coordinator = _coordinator(backend)
    run_id = coordinator.create_run(registry.get_workflow("two_tries"), {})
    assert run_id is not None
    first = coordinator.run_task(run_id, "only")
    assert (first.kind, first.delay_s) == ("retry", 0.25)
    with db.connection() as c:  # let the retry delay pass at once
        c.exec_driver_sql("UPDATE task_runs SET next_attempt_at = NULL")
    assert coordinator.run_task(run_id, "only").kind == "failed"
    attempts = store.get_attempts(run_id, "only")
    assert [(a.status, a.error_kind) for a in attempts] == [("Failed", "transient"), ("Failed", "transient")]
    assert attempts[0].error_message == "Python task execution failed: TimeoutError: upstream timeout"
    assert store.get_tasks(run_id)["only"].max_attempts == 2
    db.dispose()


def test_an_attempt_driven_by_hand_gets_a_handle_on_the_slot_bound_around_it(backend: Any) -> None:
    seen: dict[str, Any] = {}
    with cloaca.WorkflowBuilder("by_hand"):

        @cloaca.task(id="only")
        def only(ctx: Any, handle: Any) -> Any:
            seen["before"] = handle.is_slot_held()
            handle.defer_until(lambda: seen.setdefault("during", handle.is_slot_held()) is False, poll_interval_ms=1)
            seen["after"] = handle.is_slot_held()
            return ctx

    db, _, coordinator = _coordinator(backend)
    run_id = coordinator.create_run(registry.get_workflow("by_hand"), {})
    assert run_id is not None
    slot = UnmanagedSlot()
    with holding_slot(slot):
        assert coordinator.run_task(run_id, "only").kind == "completed"
    assert seen == {"before": True, "during": False, "after": True} and slot.is_held
    # Without a binding the attempt gets a slot of its own (a flag).
    run_2 = coordinator.create_run(registry.get_workflow("by_hand"), {})
    assert run_2 is not None and coordinator.run_task(run_2, "only").kind == "completed"
    db.dispose()
