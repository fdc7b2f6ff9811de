"""Read-only queries over runs, tasks and attempts (listing, history, snapshots for the planner)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, select, text

from cloacina.store.database import Database
from cloacina.store.driver_sql import DriverStatement, in_utc
from cloacina.store.models import TaskAttempt, TaskRun, UTCDateTime, WorkflowRun
from cloacina.store.run_records import AttemptRecord, RunRecord, TaskRecord, run_record, task_record

_RUNS = WorkflowRun.__table__
RUN_BY_ID = select(_RUNS).where(_RUNS.c.id == bindparam("run_id"))
# The same read for PostgreSQL's waiting clients, through psycopg directly (one per run waited for).
RUN_BY_ID_DRIVER = DriverStatement(
    text(f"SELECT {', '.join(c.name for c in _RUNS.c)} FROM workflow_runs WHERE id = :run_id")
)
_RUN_TIMESTAMPS = tuple(c.name for c in _RUNS.c if isinstance(c.type, UTCDateTime))


class RunQueries:
    """Queries mixed into :class:`cloacina.store.runs.RunStore`; every method is one transaction."""

    db: Database

    def get_run(self, run_id: str) -> RunRecord | None:
        # Waiting clients call this once per run: one Core statement, in autocommit on PostgreSQL (one round trip
        # instead of BEGIN, SELECT and COMMIT).
        if self.db.dialect == "postgresql":
            with self.db.single_statement() as c:
                found = RUN_BY_ID_DRIVER.execute(c, {"run_id": run_id}).fetchone()
            return run_record(in_utc(found, _RUN_TIMESTAMPS)) if found else None
        with self.db.connection() as c:
            row = c.execute(RUN_BY_ID, {"run_id": run_id}).one_or_none()
        return run_record(row) if row else None

    def get_tasks(self, run_id: str) -> dict[str, TaskRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id).order_by(TaskRun.id)).all()
            return {r.task_id: task_record(r) for r in rows}

    def get_task(self, run_id: str, task_id: str) -> tuple[RunRecord, TaskRecord] | None:
        with self.db.session() as s:
            run = s.get(WorkflowRun, run_id)
            row = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)).one_or_none()
            return (run_record(run), task_record(row)) if run and row else None

    def load(self, run_id: str) -> tuple[RunRecord, dict[str, TaskRecord]] | None:
        """The run and its tasks, read in one transaction (a consistent snapshot for the planner)."""
        with self.db.session() as s:
            row = s.get(WorkflowRun, run_id)
            if row is None:
                return None
            rows = s.scalars(select(TaskRun).where(TaskRun.run_id == run_id).order_by(TaskRun.id)).all()
            return run_record(row), {r.task_id: task_record(r) for r in rows}

    def get_attempts(self, run_id: str, task_id: str) -> list[AttemptRecord]:
        with self.db.session() as s:
            rows = s.scalars(
                select(TaskAttempt)
                .join(TaskRun, TaskAttempt.task_run_id == TaskRun.id)
                .where(TaskRun.run_id == run_id, TaskRun.task_id == task_id)
                .order_by(TaskAttempt.attempt)
            ).all()
            return [
                AttemptRecord(
                    a.attempt,
                    a.status,
                    a.error_message,
                    a.error_kind,
                    a.started_at,
                    a.completed_at,
                    _ms(a.started_at, a.completed_at),
                    a.worker,
                )
                for a in rows
            ]

    def list_runs(
        self,
        *,
        workflow_name: str | None = None,
        status: str | None = None,
        trigger_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        with self.db.session() as s:
            q = select(WorkflowRun).order_by(WorkflowRun.created_at.desc(), WorkflowRun.id)
            if workflow_name:
                q = q.where(WorkflowRun.workflow_name == workflow_name)
            if trigger_name:
                q = q.where(WorkflowRun.trigger_name == trigger_name)
            if status:
                q = q.where(WorkflowRun.status == status)
            return [run_record(r) for r in s.scalars(q.limit(limit).offset(offset)).all()]

    def count_runs(self, status: str | None = None) -> int:
        with self.db.session() as s:
            q = select(func.count()).select_from(WorkflowRun)
            if status:
                q = q.where(WorkflowRun.status == status)
            return int(s.scalar(q) or 0)


def _ms(started: datetime, completed: datetime | None) -> int | None:
    """An attempt's duration, derived from its timestamps."""
    return None if completed is None else int((completed - started).total_seconds() * 1000)
