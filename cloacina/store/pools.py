"""Task pools: named sets of slots shared by every worker, as Airflow's pools (``@task(pool="warehouse")``).

A pool task takes ``pool_slots`` of its pool's slots while it is ``Running``; the slots in use are
``SUM(pool_slots)`` of the pool's Running tasks (``task_runs.pool``/``pool_slots`` are copied from the definition
when a run is created). Nothing else is counted, so whatever ends a Running task gives its slots back with it: its
finish, a cancel, and the sweeper giving a lost attempt back (``Running -> Ready``) once its worker's heartbeat
lapsed.

**Taking slots** (:func:`start_in_pool`) is one transaction, so the limit holds across any number of workers:

1. ``SELECT slots FROM task_pools WHERE name = :pool FOR UPDATE``: every claimer of the pool queues here;
2. a **new statement** sums the slots of the pool's Running tasks. Under READ COMMITTED each statement has its
   own snapshot, taken after the lock was granted, so it sees every claim committed before (computing the sum in
   the statement that waited for the lock would use the snapshot taken before the wait, and let two in);
3. the task starts (``Ready -> Running``, its attempt, the run ``Running``) only if ``used + pool_slots <= slots``.

SQLite runs the same steps under its database write lock (``BEGIN IMMEDIATE``). A pool task's start is therefore
never deferred (:mod:`cloacina.execution.deferred_start`) and never made by a finish for its worker
(``_choose_continuation``). A task that finds its pool full stays Ready and its delivery comes back later
(:class:`PoolWait`), holding no worker process; one whose pool does not exist (or was deleted while it waited)
fails with :func:`undefined_pool_message`. A pool of 0 slots pauses its tasks; a task needing more slots than its
pool has waits until the pool grows.

>>> undefined_pool_message("warehouse")
"pool 'warehouse' is not defined: create it with `cloacina pools set warehouse --slots N`"
>>> [PoolWait("p", 1, waited, False).retry_after_s for waited in (0.0, 0.15, 0.3, 1.0, 30.0)]
[0.1, 0.2, 0.4, 1.6, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from cloacina.backoff import Backoff
from cloacina.definitions.naming import check_name
from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.database import Database
from cloacina.store.models import TaskPool, TaskRun, UTCDateTime, WorkflowRun
from cloacina.timestamps import utcnow

# A task waiting for a slot checks again after the first of these delays at least as long as it has waited so far
# (0.1 s doubling to 2 s), whichever process delivers it next: no counter to carry between deliveries.
POOL_WAIT = Backoff(initial_s=0.1, max_s=2.0)
# A waiting delivery refreshes its run's heartbeat at most this often, so the sweeper does not take a run whose
# tasks all wait for their pool for one whose messages were lost (and publish it again, and again).
WAITING_TOUCH_S = 1.0
MAX_SLOTS = 2**31 - 1

_NOW = bindparam("now", type_=UTCDateTime())
LOCK_POOL = select(TaskPool.slots).where(TaskPool.name == bindparam("pool")).with_for_update()
SLOTS_USED = select(func.coalesce(func.sum(TaskRun.pool_slots), 0)).where(
    TaskRun.pool == bindparam("pool"), TaskRun.status == TaskStatus.RUNNING.value
)
READY_POOL_TASK = select(TaskRun.pool, TaskRun.pool_slots, TaskRun.updated_at).where(
    TaskRun.run_id == bindparam("b_run"),
    TaskRun.task_id == bindparam("b_task"),
    TaskRun.status == TaskStatus.READY.value,
    TaskRun.pool.is_not(None),
    (TaskRun.next_attempt_at.is_(None)) | (TaskRun.next_attempt_at <= _NOW),
)
TOUCH_WAITING_RUN = (
    update(WorkflowRun)
    .where(
        WorkflowRun.id == bindparam("b_run"),
        WorkflowRun.status.in_((RunStatus.PENDING.value, RunStatus.RUNNING.value)),
        WorkflowRun.heartbeat_at < bindparam("touch_before", type_=UTCDateTime()),
    )
    .values(heartbeat_at=_NOW)
)


def undefined_pool_message(pool: str) -> str:
    """The error of a task whose pool does not exist, naming the command that defines it."""
    return f"pool {pool!r} is not defined: create it with `cloacina pools set {pool} --slots N`"


@dataclass(frozen=True)
class PoolTask:
    """A Ready task that takes ``slots`` of ``pool`` while it runs (Ready since ``ready_since``)."""

    pool: str
    slots: int
    ready_since: datetime


@dataclass(frozen=True)
class PoolWait:
    """A pool task that did not start: its pool is full (``missing`` False: try again after
    :attr:`retry_after_s`) or does not exist (the task must fail: :attr:`message`)."""

    pool: str
    slots: int
    waited_s: float
    missing: bool

    @property
    def retry_after_s(self) -> float:
        """The first step of :data:`POOL_WAIT` at least as long as the task has waited: 0.1, 0.2, 0.4 ... 2 s."""
        step = 0
        while POOL_WAIT.delay(step) < min(self.waited_s, POOL_WAIT.max_s):
            step += 1
        return POOL_WAIT.delay(step)

    @property
    def message(self) -> str:
        return undefined_pool_message(self.pool)


@dataclass(frozen=True)
class PoolInfo:
    """A pool as ``list_pools`` shows it: its slots, the slots its Running tasks take, its Ready tasks."""

    name: str
    slots: int
    used: int
    waiting: int
    description: str | None
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "slots": self.slots,
            "used": self.used,
            "waiting": self.waiting,
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def ready_pool_task(c: Connection, run_id: str, task_id: str, now: datetime) -> PoolTask | None:
    """The task's pool if it is a Ready (and due) pool task, else ``None``."""
    row = c.execute(READY_POOL_TASK, {"b_run": run_id, "b_task": task_id, "now": now}).one_or_none()
    if row is None or row.pool is None:
        return None
    return PoolTask(row.pool, row.pool_slots or 1, row.updated_at)


def take_slots(c: Connection, run_id: str, task: PoolTask, now: datetime) -> PoolWait | None:
    """Steps 1 and 2 of the module docstring, in the caller's transaction: ``None`` if the task may start now
    (the pool's row stays locked until the caller's commit, so start it in the same transaction), else why not."""
    slots = c.execute(LOCK_POOL, {"pool": task.pool}).scalar_one_or_none()
    waited_s = max(0.0, (now - task.ready_since).total_seconds())
    if slots is None:
        return PoolWait(task.pool, task.slots, waited_s, missing=True)
    # A statement of its own: its snapshot is taken now that the lock is held (READ COMMITTED).
    used = int(c.execute(SLOTS_USED, {"pool": task.pool}).scalar_one() or 0)
    if used + task.slots <= slots:
        return None
    touch_before = now - timedelta(seconds=WAITING_TOUCH_S)
    c.execute(TOUCH_WAITING_RUN, {"b_run": run_id, "now": now, "touch_before": touch_before})
    return PoolWait(task.pool, task.slots, waited_s, missing=False)


def _check_slots(slots: object) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise TypeError(f"slots must be an int, got {type(slots).__name__}")
    if slots < 0:
        raise ValueError(f"slots must be >= 0 (0 pauses the pool), got {slots}")
    if slots > MAX_SLOTS:
        raise ValueError(f"slots must be at most {MAX_SLOTS}, got {slots}")
    return slots


def check_pool_name(name: object) -> str:
    """``name`` if it can name a pool (1-200 letters, digits, ``_``, ``.``, ``-``), else ``ValueError``."""
    return check_name(name, "pool name")


class PoolStore:
    """Defines, lists and deletes task pools; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set_pool(self, name: str, slots: int, description: str | None = None) -> PoolInfo:
        """Create pool ``name`` or change its slots (and its description, when given). Lowering the slots below
        what is in use stops new starts until enough tasks finish; nothing running is interrupted."""
        check_pool_name(name)
        _check_slots(slots)
        if description is not None and not isinstance(description, str):
            raise TypeError(f"description must be a str, got {type(description).__name__}")
        now = utcnow()
        with self.db.connection() as c:
            values: dict[str, Any] = {"slots": slots, "updated_at": now}
            if description is not None:
                values["description"] = description
            changed = c.execute(update(TaskPool).where(TaskPool.name == name).values(**values)).rowcount
            if changed == 0:
                c.execute(
                    insert(TaskPool).values(
                        name=name, slots=slots, description=description, created_at=now, updated_at=now
                    )
                )
        found = self.get_pool(name)
        if found is None:  # deleted in between
            raise KeyError(f"pool {name!r} was deleted while it was being set")
        return found

    def delete_pool(self, name: str) -> bool:
        """Delete pool ``name``; ``False`` if there is none. Its waiting tasks fail at their next try (their pool
        is undefined); tasks running in it finish normally."""
        with self.db.connection() as c:
            return c.execute(delete(TaskPool).where(TaskPool.name == name)).rowcount == 1

    def get_pool(self, name: str) -> PoolInfo | None:
        found = self._pools(name)
        return found[0] if found else None

    def list_pools(self) -> list[PoolInfo]:
        """Every pool, by name, with the slots in use and the number of its tasks waiting (Ready)."""
        return self._pools(None)

    def _pools(self, name: str | None) -> list[PoolInfo]:
        counts = (
            select(
                TaskRun.pool,
                func.coalesce(func.sum(TaskRun.pool_slots).filter(TaskRun.status == TaskStatus.RUNNING.value), 0).label(
                    "used"
                ),
                func.count().filter(TaskRun.status == TaskStatus.READY.value).label("waiting"),
            )
            .where(TaskRun.pool.is_not(None))
            .where(TaskRun.status.in_((TaskStatus.RUNNING.value, TaskStatus.READY.value)))
            .group_by(TaskRun.pool)
        )
        pools = select(TaskPool).order_by(TaskPool.name)
        if name is not None:
            pools = pools.where(TaskPool.name == name)
            counts = counts.where(TaskRun.pool == name)
        with self.db.connection() as c:
            rows = c.execute(pools).all()
            tally = {r.pool: (int(r.used), int(r.waiting)) for r in c.execute(counts)}
        return [
            PoolInfo(r.name, r.slots, *tally.get(r.name, (0, 0)), r.description, r.created_at, r.updated_at)
            for r in rows
        ]
