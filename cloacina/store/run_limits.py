"""A workflow's ``max_active_runs``: runs beyond the limit wait, and start first in, first out as others end.

**Admission** (:func:`admit`, in the transaction that inserts a run of a limited workflow): under the workflow's
lock, the run may start now unless the workflow already has ``max_active_runs`` active runs that are not waiting,
or has waiting runs (a newcomer never overtakes them). A run that may not start is inserted ``Pending`` with a
``waiting_reason``, every task ``NotStarted``, and is not published.

**Promotion** (:meth:`RunLimits.promote_waiting`, in a transaction of its own after a run of the workflow ended):
under the same lock, count the active runs that are not waiting and take the oldest waiting ones (``created_at``,
then ``id``) up to the free capacity: clear their reason and plan their roots. The caller then hands them to its
dispatcher. Every end of a run is followed by a promotion in the process that ended it, and the sweeper promotes
too (that process may die in between), so no waiting run is left behind while a slot is free.

The lock serialises admissions and promotions of one workflow, never anything else: PostgreSQL's
``pg_advisory_xact_lock`` on a key derived from the workflow's name; SQLite's write lock (every transaction begins
``IMMEDIATE``). Ending a run does not take it: an end that commits while a promotion counts is seen by the
promotion that follows that end. A waiting run is active (``Pending``): it holds its trigger's dedup key, the
sweeper never takes it for a stalled run, and cancelling it ends it (clearing its reason) before it ever starts.
Workflows without a limit never come here: their runs open with PostgreSQL's one-statement fast path.

>>> waiting_reason("etl", 2)
"waiting for a slot: max_active_runs=2 of workflow 'etl' reached"
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import BindParameter, bindparam, func, select, text, update
from sqlalchemy.engine import Connection

from cloacina.definitions.workflow import Workflow
from cloacina.store import run_statements as sql
from cloacina.store.database import Database
from cloacina.store.models import UTCDateTime, WorkflowRun
from cloacina.store.run_planning import plan_locked
from cloacina.store.run_records import Transition
from cloacina.timestamps import utcnow

_NAME: BindParameter[str] = bindparam("name")
_NOW = bindparam("now", type_=UTCDateTime())
_IS_WAITING = WorkflowRun.waiting_reason.is_not(None)

# Active runs of a workflow that hold a slot (waiting ones do not).
COUNT_ACTIVE = (
    select(func.count())
    .select_from(WorkflowRun)
    .where(
        WorkflowRun.workflow_name == _NAME,
        WorkflowRun.status.in_(sql.ACTIVE_RUN),
        WorkflowRun.waiting_reason.is_(None),
    )
)

# Whether a workflow has a waiting run (ix_workflow_runs_waiting). Only active runs have a reason: every end
# clears it (END_RUN).
ANY_WAITING = select(WorkflowRun.id).where(WorkflowRun.workflow_name == _NAME, _IS_WAITING).limit(1)

OLDEST_WAITING = (
    select(WorkflowRun.id, WorkflowRun.workflow_version, WorkflowRun.package_fingerprint)
    .where(WorkflowRun.workflow_name == _NAME, _IS_WAITING, WorkflowRun.status.in_(sql.ACTIVE_RUN))
    .order_by(WorkflowRun.created_at, WorkflowRun.id)
    .limit(bindparam("n"))
)

# Takes the run's row lock (the order of every run transition: the run's row before its tasks') and bumps its
# version, as LOCK_RUN does; matches only a run still waiting.
PROMOTE_RUN = (
    update(WorkflowRun)
    .where(WorkflowRun.id == bindparam("b_run"), WorkflowRun.status.in_(sql.ACTIVE_RUN), _IS_WAITING)
    .values(
        waiting_reason=None,
        heartbeat_at=_NOW,
        updated_at=_NOW,
        version=WorkflowRun.version + 1,
    )
    .returning(WorkflowRun.input_context)
)


def waiting_reason(workflow_name: str, limit: int) -> str:
    """Why a run of ``workflow_name`` waits, as its run record and every view of it say."""
    return f"waiting for a slot: max_active_runs={limit} of workflow {workflow_name!r} reached"


def lock_key(schema: str | None, workflow_name: str) -> int:
    """The advisory-lock key of a workflow's admissions and promotions (a signed 64-bit int)."""
    digest = hashlib.sha256(f"cloacina.max_active_runs:{schema or ''}:{workflow_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_workflow(c: Connection, db: Database, workflow_name: str) -> None:
    """Serialise this transaction with every other admission and promotion of ``workflow_name``, until it ends."""
    if db.dialect == "postgresql":
        c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(db.schema, workflow_name)})
    # SQLite: the transaction began IMMEDIATE (cloacina.store.database), so it holds the database's write lock.


def admit(c: Connection, db: Database, workflow: Workflow) -> str | None:
    """In the transaction that inserts a run of ``workflow`` (which has a limit): ``None`` if the run may start
    now, else the reason it waits. Takes the workflow's lock."""
    limit = workflow.max_active_runs
    assert limit is not None, "only a workflow with max_active_runs is admitted"
    lock_workflow(c, db, workflow.name)
    params = {"name": workflow.name}
    if c.execute(ANY_WAITING, params).first() is not None or c.execute(COUNT_ACTIVE, params).scalar_one() >= limit:
        return waiting_reason(workflow.name, limit)
    return None


@dataclass(frozen=True)
class PromotedRun:
    """A waiting run that got its slot: its roots are planned (``transition``: Ready tasks, or its end)."""

    run_id: str
    workflow: Workflow
    transition: Transition


@dataclass(frozen=True)
class Promotion:
    """What one promotion did. ``unresolved``: the next run in line is of a version not given (its version and
    package fingerprint); promoting stopped there, first in first out: resolve it and promote again."""

    promoted: list[PromotedRun]
    unresolved: tuple[str, str | None] | None = None


class RunLimits:
    """Promoting waiting runs (mixed into :class:`cloacina.store.runs.RunStore`)."""

    db: Database

    def promote_waiting(self, workflow_name: str, limit: int | None, workflows: Mapping[str, Workflow]) -> Promotion:
        """Start the oldest waiting runs of ``workflow_name`` while fewer than ``limit`` runs are active (``None``:
        the workflow has no limit any more, every waiting run starts); one transaction, under the workflow's lock.

        ``workflows``: the workflow of each version, to plan a run's roots with (planning reads no code, so the
        caller resolves versions before, never while the lock is held).
        """
        promoted: list[PromotedRun] = []
        with self.db.connection() as c:
            lock_workflow(c, self.db, workflow_name)
            now = utcnow()
            free: int | None = None
            if limit is not None:
                free = limit - c.execute(COUNT_ACTIVE, {"name": workflow_name}).scalar_one()
            while free is None or free > 0:
                rows = c.execute(OLDEST_WAITING, {"name": workflow_name, "n": free or 100}).all()
                if not rows:
                    break
                for row in rows:
                    workflow = workflows.get(row.workflow_version)
                    if workflow is None:
                        return Promotion(promoted, (row.workflow_version, row.package_fingerprint))
                    run_input = c.execute(PROMOTE_RUN, {"b_run": row.id, "now": now}).scalar_one_or_none()
                    if run_input is None:  # cancelled since it was read
                        continue
                    transition = plan_locked(c, row.id, run_input, workflow, now)
                    promoted.append(PromotedRun(row.id, workflow, transition))
                    if free is not None and transition.ended is None:  # a run that ended at once holds no slot
                        free -= 1
        return Promotion(promoted)
