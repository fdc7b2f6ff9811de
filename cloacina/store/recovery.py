"""Queries for the sweeper: attempts whose worker died, runs whose messages were lost, runs past deadline.

All claims are guarded updates, so several sweepers (poller replicas, runner processes) never act twice on the
same thing. Only active runs (``Pending``/``Running``) are looked at: a run that ended, ``Cancelled`` included, is
never recovered, and an attempt still running in a cancelled run is not a lost one. A run waiting for a slot of
its workflow's ``max_active_runs`` is not a stalled run (nothing of it is meant to run yet):
:meth:`RecoveryStore.waiting_workflows` names the workflows whose waiting runs the sweeper promotes instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, select, update

from cloacina.engine.states import RunStatus, TaskStatus
from cloacina.store.database import Database, rowcount
from cloacina.store.models import TaskAttempt, TaskRun, WorkflowRun

_ACTIVE = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
LOST = "Lost"


@dataclass(frozen=True)
class LostAttempt:
    run_id: str
    task_id: str
    attempt: int
    heartbeat_at: datetime | None


@dataclass(frozen=True)
class WaitingWorkflow:
    """A workflow with runs waiting for a slot, and its oldest waiting run's version (what a promotion plans
    first)."""

    workflow_name: str
    workflow_version: str
    package_fingerprint: str | None


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    workflow_name: str
    workflow_version: str
    heartbeat_at: datetime | None
    deadline_at: datetime | None


class RecoveryStore:
    """Finds and claims lost work; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def lost_attempts(self, cutoff: datetime, limit: int = 500) -> list[LostAttempt]:
        """Running attempts whose last heartbeat is older than ``cutoff`` (their worker is gone)."""
        with self.db.session() as s:
            rows = s.execute(
                select(TaskRun.run_id, TaskRun.task_id, TaskRun.attempt, TaskRun.heartbeat_at)
                .join(WorkflowRun, WorkflowRun.id == TaskRun.run_id)
                .where(TaskRun.status == TaskStatus.RUNNING.value, WorkflowRun.status.in_(_ACTIVE))
                .where((TaskRun.heartbeat_at < cutoff) | TaskRun.heartbeat_at.is_(None))
                .limit(limit)
            ).all()
            return [LostAttempt(*r) for r in rows]

    def requeue_lost(self, lost: LostAttempt, now: datetime, max_lost: int) -> str | None:
        """Give a lost attempt back: Ready again (``"requeued"``), or Failed after ``max_lost`` losses
        (``"failed"``); ``None`` if someone else already dealt with it."""
        with self.db.session() as s:
            row = s.scalars(
                select(TaskRun).where(TaskRun.run_id == lost.run_id, TaskRun.task_id == lost.task_id)
            ).one_or_none()
            if row is None or row.status != TaskStatus.RUNNING.value or row.attempt != lost.attempt:
                return None
            losses = s.scalar(
                select(func.count())
                .select_from(TaskAttempt)
                .where(TaskAttempt.task_run_id == row.id, TaskAttempt.status == LOST)
            )
            # The run's row first (the lock order of every run transition), bumping its version: a finishing task
            # that planned from an older view of the run must not apply that plan.
            locked = s.execute(
                update(WorkflowRun)
                .where(WorkflowRun.id == lost.run_id)
                .values(heartbeat_at=now, version=WorkflowRun.version + 1)
            )
            if rowcount(locked) != 1:
                return None
            message = "worker lost: no heartbeat from the attempt's worker"
            give_up = (losses or 0) + 1 >= max_lost
            values = {"updated_at": now, "error_message": message, "error_kind": "transient"}
            if give_up:
                values.update(status=TaskStatus.FAILED.value, completed_at=now)
                values["error_message"] = f"worker lost {max_lost} times running this task; giving up"
            else:
                values.update(status=TaskStatus.READY.value, next_attempt_at=None)
            res = s.execute(
                update(TaskRun)
                .where(
                    TaskRun.id == row.id, TaskRun.status == TaskStatus.RUNNING.value, TaskRun.attempt == lost.attempt
                )
                .values(**values)
            )
            if rowcount(res) != 1:
                s.rollback()
                return None
            s.execute(
                update(TaskAttempt)
                .where(TaskAttempt.task_run_id == row.id, TaskAttempt.attempt == lost.attempt)
                .values(status=LOST, error_message=message, error_kind="transient", completed_at=now)
            )
            return "failed" if give_up else "requeued"

    def stale_runs(self, cutoff: datetime, now: datetime, limit: int = 200) -> list[StaleRun]:
        """Active runs with no progress since ``cutoff`` that are not just waiting for a retry delay or a live
        task: their messages were lost (broker restarted, publish failed) or their executor died."""
        busy = exists().where(
            and_(
                TaskRun.run_id == WorkflowRun.id,
                (TaskRun.status == TaskStatus.RUNNING.value)
                | and_(TaskRun.status == TaskStatus.READY.value, TaskRun.next_attempt_at > now),
            )
        )
        with self.db.session() as s:
            rows = s.execute(
                select(
                    WorkflowRun.id,
                    WorkflowRun.workflow_name,
                    WorkflowRun.workflow_version,
                    WorkflowRun.heartbeat_at,
                    WorkflowRun.deadline_at,
                )
                .where(
                    WorkflowRun.status.in_(_ACTIVE),
                    WorkflowRun.heartbeat_at < cutoff,
                    WorkflowRun.waiting_reason.is_(None),  # waiting for a slot: promoted, not republished
                    ~busy,
                )
                .order_by(WorkflowRun.heartbeat_at)
                .limit(limit)
            ).all()
            return [StaleRun(*r) for r in rows]

    def waiting_workflows(self, limit: int = 100) -> list[WaitingWorkflow]:
        """Workflows with runs waiting for a slot (``ix_workflow_runs_waiting``), each with its oldest waiting run's
        version."""
        waiting = WorkflowRun.waiting_reason.is_not(None)
        with self.db.session() as s:
            names = s.scalars(
                select(WorkflowRun.workflow_name).where(waiting).distinct().order_by(WorkflowRun.workflow_name)
            ).all()
            found: list[WaitingWorkflow] = []
            for name in names[:limit]:
                oldest = s.execute(
                    select(WorkflowRun.workflow_version, WorkflowRun.package_fingerprint)
                    .where(WorkflowRun.workflow_name == name, waiting)
                    .order_by(WorkflowRun.created_at, WorkflowRun.id)
                    .limit(1)
                ).first()
                if oldest is not None:
                    found.append(WaitingWorkflow(name, *oldest))
            return found

    def claim_stale_run(self, run: StaleRun, now: datetime) -> bool:
        """Take responsibility for republishing ``run`` (compare-and-set on its heartbeat)."""
        with self.db.session() as s:
            res = s.execute(
                update(WorkflowRun)
                .where(
                    WorkflowRun.id == run.run_id,
                    WorkflowRun.status.in_(_ACTIVE),
                    WorkflowRun.heartbeat_at == run.heartbeat_at,
                )
                .values(heartbeat_at=now)
            )
            return rowcount(res) == 1

    def expired_runs(self, now: datetime, limit: int = 200) -> list[tuple[str, float]]:
        """Active runs past their deadline, with the timeout they had (seconds)."""
        with self.db.session() as s:
            rows = s.execute(
                select(WorkflowRun.id, WorkflowRun.created_at, WorkflowRun.deadline_at)
                .where(WorkflowRun.status.in_(_ACTIVE), WorkflowRun.deadline_at < now)
                .limit(limit)
            ).all()
            return [
                (run_id, (deadline - created).total_seconds())
                for run_id, created, deadline in rows
                if deadline is not None  # never NULL past the WHERE; this tells the type checker
            ]
