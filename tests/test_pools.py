"""Task pools (cloacina.store.pools): ``@task(pool=, pool_slots=)``, the slot accounting in SQL on SQLite and
PostgreSQL (the ``backend`` fixture), concurrent claimers that never exceed the slots, undefined and deleted
pools, the sweeper freeing a lost attempt's slots, and the embedded runner keeping the limit end to end.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

import cloacina as cloaca
from cloacina.definitions import registry
from cloacina.definitions.workflow import Workflow
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.execution.coordinator import RunCoordinator
from cloacina.store.database import Database
from cloacina.store.models import TaskRun
from cloacina.store.pools import PoolStore, PoolWait
from cloacina.store.recovery import RecoveryStore
from cloacina.store.runs import ContinueWith, RunStore, StartedAttempt
from cloacina.timestamps import utcnow

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def db(backend: Any) -> Iterator[Database]:
    database = Database(backend.url, schema=backend.schema)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> RunStore:
    return RunStore(db)


@pytest.fixture
def pools(db: Database) -> PoolStore:
    return PoolStore(db)


def _parallel(name: str, width: int, *, pool: str = "warehouse", slots: int = 1) -> Workflow:
    """``width`` independent root tasks ``t0..`` in ``pool``."""
    with cloaca.WorkflowBuilder(name) as builder:
        for n in range(width):
            cloaca.task(id=f"t{n}", pool=pool, pool_slots=slots)(lambda ctx: ctx)
    return registry.get_workflow(builder.name)


def _started(value: object) -> StartedAttempt:
    assert isinstance(value, StartedAttempt), value
    return value


def _coordinator(store: RunStore, *workflows: Workflow) -> RunCoordinator:
    known = {w.name: w for w in workflows}
    return RunCoordinator(store, lambda name, version, fingerprint: known[name], worker_name="test")


# -- declaring ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"pool": ""}, "pool must be a non-empty pool name"),
        ({"pool": 3}, "pool must be a non-empty pool name"),
        ({"pool": "bad name"}, "invalid pool name"),
        ({"pool": "p", "pool_slots": 0}, "pool_slots must be an int >= 1"),
        ({"pool": "p", "pool_slots": -1}, "pool_slots must be an int >= 1"),
        ({"pool": "p", "pool_slots": 1.5}, "pool_slots must be an int >= 1"),
        ({"pool": "p", "pool_slots": True}, "pool_slots must be an int >= 1"),
        ({"pool_slots": 2}, "pool_slots=2 needs pool=<name>"),
    ],
)
def test_bad_pool_options_are_refused_at_decoration(options: dict[str, Any], words: str) -> None:
    with cloaca.WorkflowBuilder("bad_pool"):
        cloaca.task(id="ok")(lambda ctx: ctx)
        with pytest.raises(ValueError, match=re.escape(words)):
            cloaca.task(id="t", **options)(lambda ctx: ctx)


def test_pool_options_are_kept() -> None:
    wf = _parallel("kept", 2, pool="p", slots=2)
    assert [(t.pool, t.pool_slots) for t in wf.tasks.values()] == [("p", 2), ("p", 2)]
    with cloaca.WorkflowBuilder("unpooled") as builder:
        cloaca.task(id="t0")(lambda ctx: ctx)
    assert registry.get_workflow(builder.name).tasks["t0"].pool is None


# -- the store ------------------------------------------------------------------------------------------------
def test_rows_carry_the_pool_and_the_slots(store: RunStore, db: Database) -> None:
    wf = _parallel("rows", 2, slots=3)
    opened = store.open_run(wf, {})
    assert opened is not None
    with db.session() as s:
        rows = s.execute(select(TaskRun.task_id, TaskRun.pool, TaskRun.pool_slots).order_by(TaskRun.task_id)).all()
    assert [tuple(r) for r in rows] == [("t0", "warehouse", 3), ("t1", "warehouse", 3)]


def test_slots_are_taken_and_given_back(store: RunStore, pools: PoolStore) -> None:
    pools.set_pool("warehouse", 2, "the warehouse")
    wf = _parallel("slots", 4)
    opened = store.open_run(wf, {})
    assert opened is not None
    run_id = opened.run_id
    first, second = (_started(store.begin_attempt(run_id, t, worker="w")) for t in ("t0", "t1"))
    assert first.is_recorded and second.is_recorded  # a pool task's start is never deferred
    waiting = store.begin_attempt(run_id, "t2", worker="w")
    assert isinstance(waiting, PoolWait) and not waiting.missing and waiting.pool == "warehouse"
    assert 0.1 <= waiting.retry_after_s <= 2.0
    info = pools.get_pool("warehouse")
    assert info is not None and (info.slots, info.used, info.waiting) == (2, 2, 2)
    assert info.description == "the warehouse"
    store.complete_attempt(run_id, "t0", first.attempt, {}, wf, first.basis)
    _started(store.begin_attempt(run_id, "t2", worker="w"))
    assert isinstance(store.begin_attempt(run_id, "t3", worker="w"), PoolWait)
    assert store.get_tasks(run_id)["t3"].status == TaskStatus.READY  # waiting holds nothing: still Ready
    listed = {p.name: p for p in pools.list_pools()}
    assert (listed["warehouse"].used, listed["warehouse"].waiting) == (2, 1)


def test_pool_slots_count_by_weight(store: RunStore, pools: PoolStore) -> None:
    pools.set_pool("warehouse", 3)
    wf = _parallel("weights", 2, slots=2)
    opened = store.open_run(wf, {})
    assert opened is not None
    _started(store.begin_attempt(opened.run_id, "t0", worker="w"))
    assert isinstance(store.begin_attempt(opened.run_id, "t1", worker="w"), PoolWait)  # 2 + 2 > 3
    pools.set_pool("warehouse", 4)  # grown: a change applies at the next try
    _started(store.begin_attempt(opened.run_id, "t1", worker="w"))
    assert pools.list_pools()[0].used == 4


def test_zero_slots_pause_and_negative_slots_are_refused(store: RunStore, pools: PoolStore) -> None:
    pools.set_pool("warehouse", 0)
    wf = _parallel("paused", 1)
    opened = store.open_run(wf, {})
    assert opened is not None
    assert isinstance(store.begin_attempt(opened.run_id, "t0", worker="w"), PoolWait)
    with pytest.raises(ValueError, match="slots must be >= 0"):
        pools.set_pool("warehouse", -1)
    with pytest.raises(TypeError, match="slots must be an int"):
        pools.set_pool("warehouse", "2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid pool name"):
        pools.set_pool("", 1)
    pools.set_pool("warehouse", 1)
    _started(store.begin_attempt(opened.run_id, "t0", worker="w"))


def test_start_attempt_honours_the_pool_too(store: RunStore, pools: PoolStore) -> None:
    pools.set_pool("warehouse", 1)
    opened = store.open_run(_parallel("direct", 2), {})
    assert opened is not None
    _started(store.start_attempt(opened.run_id, "t0", worker="w"))
    assert isinstance(store.start_attempt(opened.run_id, "t1", worker="w"), PoolWait)


def test_an_undefined_pool_fails_the_task_naming_the_command(store: RunStore) -> None:
    wf = _parallel("undefined", 1)
    coordinator = _coordinator(store, wf)
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    outcome = coordinator.run_node(run_id, "t0")
    assert outcome.kind == "failed"
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.FAILED
    task = store.get_tasks(run_id)["t0"]
    assert task.status == TaskStatus.FAILED and task.attempt == 1
    assert "pool 'warehouse' is not defined" in (task.error_message or "")
    assert "cloacina pools set warehouse --slots N" in (run.error_message or "")


def test_a_pool_deleted_while_tasks_wait_fails_them(store: RunStore, pools: PoolStore) -> None:
    pools.set_pool("warehouse", 1)
    wf = _parallel("deleted", 2)
    coordinator = _coordinator(store, wf)
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    first = _started(store.begin_attempt(run_id, "t0", worker="w"))
    assert coordinator.run_node(run_id, "t1").kind == "retry"  # waits for the slot t0 holds
    assert pools.delete_pool("warehouse") and not pools.delete_pool("warehouse")
    assert coordinator.run_node(run_id, "t1").kind == "failed"
    store.complete_attempt(run_id, "t0", first.attempt, {}, wf, first.basis)  # the running one finishes
    coordinator.advance(run_id, wf)
    run = store.get_run(run_id)
    assert run is not None and run.status == RunStatus.FAILED
    tasks = store.get_tasks(run_id)
    assert tasks["t0"].status == TaskStatus.COMPLETED and tasks["t1"].status == TaskStatus.FAILED
    assert "cloacina pools set warehouse --slots N" in (tasks["t1"].error_message or "")


def test_a_lost_attempt_gives_its_slot_back(store: RunStore, pools: PoolStore, db: Database) -> None:
    pools.set_pool("warehouse", 1)
    opened = store.open_run(_parallel("lost", 2), {})
    assert opened is not None
    _started(store.begin_attempt(opened.run_id, "t0", worker="dead"))
    assert isinstance(store.begin_attempt(opened.run_id, "t1", worker="w"), PoolWait)
    recovery = RecoveryStore(db)
    lost = recovery.lost_attempts(utcnow() + timedelta(seconds=1))  # its heartbeat lapsed
    assert [(x.run_id, x.task_id) for x in lost] == [(opened.run_id, "t0")]
    assert recovery.requeue_lost(lost[0], utcnow(), max_lost=3) == "requeued"
    assert pools.list_pools()[0].used == 0
    _started(store.begin_attempt(opened.run_id, "t1", worker="w"))


def test_a_finish_never_starts_a_pool_task_for_its_worker(store: RunStore, pools: PoolStore) -> None:
    pools.set_pool("warehouse", 1)
    with cloaca.WorkflowBuilder("continued") as builder:
        cloaca.task(id="a")(lambda ctx: ctx)
        cloaca.task(id="b", dependencies=["a"], pool="warehouse")(lambda ctx: ctx)
    wf = registry.get_workflow(builder.name)
    opened = store.open_run(wf, {})
    assert opened is not None
    a = _started(store.begin_attempt(opened.run_id, "a", worker="w"))
    start = None
    if not a.is_recorded:  # PostgreSQL defers a's start to its finish
        assert store.record_start(opened.run_id, "a", a, worker="w")
    transition = store.complete_attempt(
        opened.run_id, "a", a.attempt, {}, wf, a.basis, start, worker="w", continue_with=ContinueWith("b", True)
    )
    assert transition.applied and transition.continued is None and transition.ready == ("b",)
    assert store.get_tasks(opened.run_id)["b"].status == TaskStatus.READY
    _started(store.begin_attempt(opened.run_id, "b", worker="w"))


def test_retried_runs_keep_the_pool(store: RunStore, pools: PoolStore, db: Database) -> None:
    wf = _parallel("retried", 1)
    coordinator = _coordinator(store, wf)
    run_id = coordinator.create_run(wf, {})
    assert run_id is not None
    assert coordinator.run_node(run_id, "t0").kind == "failed"  # no pool yet
    pools.set_pool("warehouse", 1)
    again = coordinator.retry_run(run_id)
    with db.session() as s:
        row = s.execute(select(TaskRun.pool, TaskRun.pool_slots).where(TaskRun.run_id == again)).one()
    assert tuple(row) == ("warehouse", 1)
    assert coordinator.run_node(again, "t0").kind == "completed"


def test_concurrent_claimers_never_exceed_the_slots(store: RunStore, pools: PoolStore) -> None:
    """Eight threads race to start 24 pool tasks of 3-slot pool: never more than 3 Running at once."""
    slots = 3
    pools.set_pool("warehouse", slots)
    wf = _parallel("racing", 6)
    runs = []
    for _ in range(4):
        opened = store.open_run(wf, {})
        assert opened is not None
        runs.append(opened.run_id)
    todo = [(run_id, f"t{n}") for run_id in runs for n in range(6)]
    lock = threading.Lock()
    running = 0
    peak = 0
    done: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        nonlocal running, peak
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    run_id, task_id = todo.pop(0)
                begun = store.begin_attempt(run_id, task_id, worker=threading.current_thread().name)
                if not isinstance(begun, StartedAttempt):
                    with lock:
                        todo.append((run_id, task_id))  # its pool was full: try again later
                    time.sleep(0.002)
                    continue
                with lock:  # counted after the start, uncounted before the finish: a lower bound of Running
                    running += 1
                    peak = max(peak, running)
                time.sleep(0.01)
                with lock:
                    running -= 1
                store.complete_attempt(run_id, task_id, begun.attempt, {}, wf, begun.basis)
                with lock:
                    done.append((run_id, task_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, name=f"claimer{n}") for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(done) == 24 and len(set(done)) == 24
    assert 1 <= peak <= slots
    for run_id in runs:
        assert all(t.status == TaskStatus.COMPLETED for t in store.get_tasks(run_id).values())
    assert pools.list_pools()[0].used == 0


# -- the embedded runner --------------------------------------------------------------------------------------
def test_the_embedded_runner_keeps_the_limit(make_runner: Any) -> None:
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    with cloaca.WorkflowBuilder("embedded_pool") as builder:
        for n in range(6):

            @cloaca.task(id=f"t{n}", pool="warehouse")
            def work(ctx: Any) -> Any:
                began = time.monotonic()
                time.sleep(0.05)
                with lock:
                    spans.append((began, time.monotonic()))
                return ctx

    runner = make_runner(max_concurrent_tasks=6)
    pool = runner.set_pool("warehouse", 2, description="two at a time")
    assert (pool["slots"], pool["used"], pool["waiting"]) == (2, 0, 0)
    result = runner.execute(builder.name, cloaca.Context({}))
    assert result.status == "Completed", result.error_message
    assert len(spans) == 6
    for moment in (start for start, _ in spans):  # at any task's start, at most 2 are running
        assert sum(1 for s, e in spans if s <= moment < e) <= 2
    assert [p["name"] for p in runner.list_pools()] == ["warehouse"]
    assert runner.get_pool("nope") is None
    assert runner.delete_pool("warehouse") and not runner.delete_pool("warehouse")
    with pytest.raises(ValueError, match="slots must be >= 0"):
        runner.set_pool("warehouse", -2)
    failed = runner.execute(builder.name, cloaca.Context({}))  # its pool is gone now
    assert failed.status == "Failed"
    assert "cloacina pools set warehouse --slots N" in (failed.error_message or "")
