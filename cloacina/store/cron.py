"""Repository for cron schedules and their execution history.

Every method is one transaction and returns frozen dataclasses (``.to_dict()`` for the public API), never ORM
objects. Due times are *claimed* elsewhere: :meth:`cloacina.store.runs.RunStore.create_run` with a ``CronClaim``
inserts the run and its ``cron_executions`` row together, and the unique (schedule_id, scheduled_time) decides
which of N schedulers fires a due time. This module only moves the schedule's cursor (``next_run_at``) forward,
with a guarded ``UPDATE ... WHERE next_run_at = <what I read>`` so a stale scheduler never moves it back.

Example::

    store = CronStore(db)
    schedule, created = store.get_or_create_schedule("nightly", "0 2 * * *", "Europe/Berlin", "skip", next_run)
    store.advance_schedule(schedule.id, expected_next_run_at=next_run, next_run_at=following, last_run_at=next_run)
    store.execution_history(schedule.id, limit=10)
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from cloacina.engine.states import RunStatus
from cloacina.store.database import Database, rowcount
from cloacina.store.models import CronExecution, CronSchedule, WorkflowRun
from cloacina.timestamps import utcnow

_UNSET: Any = object()


@dataclass(frozen=True)
class CronScheduleRecord:
    """One row of ``cron_schedules``."""

    id: int
    workflow_name: str
    cron_expression: str
    timezone: str
    enabled: bool
    catchup_policy: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CronExecutionRecord:
    """One claimed due time, with the status of the run it started (``None`` if that run was deleted)."""

    id: int
    schedule_id: int
    scheduled_time: datetime
    claimed_at: datetime
    run_id: str | None
    status: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CronExecutionStats:
    """Executions claimed since ``since``, by the status of their runs (``"Lost"``: the run row is gone).

    ``success_rate`` is the percentage of finished runs (Completed or Failed) that completed; 0.0 if none.
    """

    since: datetime
    total_executions: int
    successful_executions: int
    failed_executions: int
    in_progress_executions: int
    lost_executions: int
    success_rate: float
    by_status: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(row: CronSchedule) -> CronScheduleRecord:
    return CronScheduleRecord(
        id=row.id,
        workflow_name=row.workflow_name,
        cron_expression=row.cron_expression,
        timezone=row.timezone,
        enabled=bool(row.enabled),
        catchup_policy=row.catchup_policy,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class CronStore:
    """Reads and writes cron schedules; every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- schedules --------------------------------------------------------------------------------------
    def create_schedule(
        self,
        workflow_name: str,
        cron_expression: str,
        timezone: str,
        catchup_policy: str,
        next_run_at: datetime | None,
        *,
        enabled: bool = True,
    ) -> CronScheduleRecord:
        """Insert a new schedule (callers validate the expression and compute ``next_run_at``)."""
        with self.db.session() as s:
            return self._insert(s, workflow_name, cron_expression, timezone, catchup_policy, next_run_at, enabled)

    def get_or_create_schedule(
        self,
        workflow_name: str,
        cron_expression: str,
        timezone: str,
        catchup_policy: str,
        next_run_at: datetime | None,
    ) -> tuple[CronScheduleRecord, bool]:
        """The schedule with this (workflow, expression, zone), created if absent; ``True`` if created now.

        There is no unique constraint on that triple, so concurrent registrations (every replica of an app
        registering its schedules at start-up) are serialised instead: a transaction-scoped advisory lock on
        PostgreSQL, the database write lock (taken by a no-op ``UPDATE``) on SQLite.
        """
        with self.db.session() as s:
            self._lock_registration(s, workflow_name, cron_expression, timezone)
            existing = s.scalars(
                select(CronSchedule)
                .where(
                    CronSchedule.workflow_name == workflow_name,
                    CronSchedule.cron_expression == cron_expression,
                    CronSchedule.timezone == timezone,
                )
                .order_by(CronSchedule.id)
                .limit(1)
            ).first()
            if existing is not None:
                return _record(existing), False
            return self._insert(s, workflow_name, cron_expression, timezone, catchup_policy, next_run_at, True), True

    def _lock_registration(self, s: Session, workflow_name: str, cron_expression: str, timezone: str) -> None:
        if self.db.dialect == "postgresql":
            key = f"cloacina.cron:{self.db.schema or ''}:{workflow_name}:{cron_expression}:{timezone}"
            lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})
        else:  # a write statement takes SQLite's single writer lock until commit, even if it matches no row
            s.execute(update(CronSchedule).where(CronSchedule.id == -1).values(enabled=CronSchedule.enabled))

    @staticmethod
    def _insert(
        s: Session,
        workflow_name: str,
        cron_expression: str,
        timezone: str,
        catchup_policy: str,
        next_run_at: datetime | None,
        enabled: bool,
    ) -> CronScheduleRecord:
        now = utcnow()
        row = CronSchedule(
            workflow_name=workflow_name,
            cron_expression=cron_expression,
            timezone=timezone,
            enabled=enabled,
            catchup_policy=catchup_policy,
            next_run_at=next_run_at,
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        return _record(row)

    def get_schedule(self, schedule_id: int) -> CronScheduleRecord | None:
        with self.db.session() as s:
            row = s.get(CronSchedule, schedule_id)
            return _record(row) if row is not None else None

    def list_schedules(
        self, *, enabled_only: bool = False, limit: int | None = 100, offset: int = 0
    ) -> list[CronScheduleRecord]:
        """Schedules in id order; ``limit=None`` for all of them."""
        with self.db.session() as s:
            q = select(CronSchedule).order_by(CronSchedule.id).offset(offset)
            if enabled_only:
                q = q.where(CronSchedule.enabled.is_(True))
            if limit is not None:
                q = q.limit(limit)
            return [_record(r) for r in s.scalars(q).all()]

    def update_schedule(
        self,
        schedule_id: int,
        *,
        cron_expression: str | None = None,
        timezone: str | None = None,
        catchup_policy: str | None = None,
        next_run_at: datetime | None = _UNSET,
    ) -> CronScheduleRecord | None:
        """Change the given fields; ``None`` if the schedule does not exist."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if cron_expression is not None:
            values["cron_expression"] = cron_expression
        if timezone is not None:
            values["timezone"] = timezone
        if catchup_policy is not None:
            values["catchup_policy"] = catchup_policy
        if next_run_at is not _UNSET:
            values["next_run_at"] = next_run_at
        with self.db.session() as s:
            res = s.execute(update(CronSchedule).where(CronSchedule.id == schedule_id).values(**values))
            if rowcount(res) != 1:
                return None
            row = s.get(CronSchedule, schedule_id, populate_existing=True)
            assert row is not None
            return _record(row)

    def set_enabled(self, schedule_id: int, enabled: bool, *, next_run_at: datetime | None = _UNSET) -> bool:
        """Enable or disable a schedule (optionally moving its cursor); ``False`` if it does not exist."""
        values: dict[str, Any] = {"enabled": bool(enabled), "updated_at": utcnow()}
        if next_run_at is not _UNSET:
            values["next_run_at"] = next_run_at
        with self.db.session() as s:
            res = s.execute(update(CronSchedule).where(CronSchedule.id == schedule_id).values(**values))
            return rowcount(res) == 1

    def delete_schedule(self, schedule_id: int) -> bool:
        """Delete a schedule and (by cascade) its execution history; its runs are kept."""
        with self.db.session() as s:
            s.execute(delete(CronExecution).where(CronExecution.schedule_id == schedule_id))
            res = s.execute(delete(CronSchedule).where(CronSchedule.id == schedule_id))
            return rowcount(res) == 1

    def advance_schedule(
        self,
        schedule_id: int,
        *,
        expected_next_run_at: datetime | None,
        next_run_at: datetime,
        last_run_at: datetime | None,
    ) -> bool:
        """Move ``next_run_at`` forward if it still is ``expected_next_run_at``; ``False`` if someone else did.

        Two schedulers that fired the same due times both try this; one wins, the other's stale value never
        overwrites the newer cursor. An ``update_schedule`` in between also makes it fail, as it should.
        """
        values: dict[str, Any] = {"next_run_at": next_run_at, "updated_at": utcnow()}
        if last_run_at is not None:
            values["last_run_at"] = last_run_at
        guard = (
            CronSchedule.next_run_at.is_(None)
            if expected_next_run_at is None
            else CronSchedule.next_run_at == expected_next_run_at
        )
        with self.db.session() as s:
            res = s.execute(update(CronSchedule).where(CronSchedule.id == schedule_id, guard).values(**values))
            return rowcount(res) == 1

    # -- executions -------------------------------------------------------------------------------------
    def execution_history(self, schedule_id: int, limit: int = 100) -> list[CronExecutionRecord]:
        """Claimed due times of one schedule, newest first, with their run's status."""
        with self.db.session() as s:
            rows = s.execute(
                select(CronExecution, WorkflowRun.status)
                .outerjoin(WorkflowRun, WorkflowRun.id == CronExecution.run_id)
                .where(CronExecution.schedule_id == schedule_id)
                .order_by(CronExecution.scheduled_time.desc(), CronExecution.id.desc())
                .limit(limit)
            ).all()
            return [
                CronExecutionRecord(e.id, e.schedule_id, e.scheduled_time, e.claimed_at, e.run_id, status)
                for e, status in rows
            ]

    def execution_stats(self, since: datetime) -> CronExecutionStats:
        """Counts of executions claimed at or after ``since`` (all schedules), by run status."""
        with self.db.session() as s:
            rows = s.execute(
                select(WorkflowRun.status, func.count(CronExecution.id))
                .select_from(CronExecution)
                .outerjoin(WorkflowRun, WorkflowRun.id == CronExecution.run_id)
                .where(CronExecution.claimed_at >= since)
                .group_by(WorkflowRun.status)
            ).all()
        by_status = {status or "Lost": int(n) for status, n in rows}
        completed = by_status.get(RunStatus.COMPLETED.value, 0)
        failed = by_status.get(RunStatus.FAILED.value, 0)
        finished = completed + failed
        return CronExecutionStats(
            since=since,
            total_executions=sum(by_status.values()),
            successful_executions=completed,
            failed_executions=failed,
            in_progress_executions=by_status.get(RunStatus.PENDING.value, 0)
            + by_status.get(RunStatus.RUNNING.value, 0),
            lost_executions=by_status.get("Lost", 0),
            success_rate=round(100.0 * completed / finished, 2) if finished else 0.0,
            by_status=by_status,
        )
