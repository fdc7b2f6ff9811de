"""Claimed cron due times (``cron_executions``): history, statistics, and cron recovery's bookkeeping.

Mixed into :class:`cloacina.store.cron.CronStore`; every method is one transaction. A due time is normally
claimed together with its run by :meth:`cloacina.store.runs.RunStore.create_run`; the methods here claim one
without a run (its workflow is unknown to the scheduler), and let cron recovery find, claim and link such claims.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError

from cloacina.store.cron_records import (
    LOST_AFTER,
    CronExecutionRecord,
    CronExecutionStats,
    CronScheduleRecord,
    LostExecution,
    schedule_record,
)
from cloacina.store.database import Database, rowcount
from cloacina.store.models import CronExecution, CronSchedule, WorkflowRun
from cloacina.timestamps import utcnow


class CronExecutions:
    """Execution queries and recovery bookkeeping (needs ``db``)."""

    db: Database

    # -- executions -------------------------------------------------------------------------------------
    def claim_without_run(self, schedule: CronScheduleRecord, scheduled_time: datetime) -> bool:
        """Claim a due time whose run could not be created, for cron recovery to re-fire; ``False`` if the due
        time was claimed already (by another scheduler, with or without a run)."""
        now = utcnow()
        try:
            with self.db.session() as s:
                s.add(
                    CronExecution(
                        schedule_id=schedule.row_id,
                        scheduled_time=scheduled_time,
                        claimed_at=now,
                        updated_at=now,
                        handoff_pending=True,
                        recovery_attempts=0,
                    )
                )
            return True
        except IntegrityError:
            return False

    def execution_history(self, schedule_id: str, limit: int = 100, offset: int = 0) -> list[CronExecutionRecord]:
        """Claimed due times of one schedule, newest first, with their run's status."""
        with self.db.session() as s:
            rows = s.execute(
                select(CronExecution, WorkflowRun.status)
                .join(CronSchedule, CronSchedule.id == CronExecution.schedule_id)
                .outerjoin(WorkflowRun, WorkflowRun.id == CronExecution.run_id)
                .where(CronSchedule.public_id == schedule_id)
                .order_by(CronExecution.scheduled_time.desc(), CronExecution.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return [
                CronExecutionRecord(
                    id=e.public_id,
                    schedule_id=schedule_id,
                    scheduled_time=e.scheduled_time,
                    claimed_at=e.claimed_at,
                    run_id=e.run_id,
                    status=status,
                    updated_at=e.updated_at or e.claimed_at,
                    handoff_pending=bool(e.handoff_pending),
                    recovery_attempts=int(e.recovery_attempts),
                )
                for e, status in rows
            ]

    def execution_stats(self, since: datetime, now: datetime | None = None) -> CronExecutionStats:
        """Counts of executions claimed at or after ``since`` (all schedules); see :class:`CronExecutionStats`."""
        lost_before = (now or utcnow()) - LOST_AFTER
        no_run = WorkflowRun.id.is_(None)
        with self.db.session() as s:
            rows = s.execute(
                select(
                    WorkflowRun.status,
                    func.count(CronExecution.id),
                    func.sum(case((CronExecution.run_id.is_not(None), 1), else_=0)),
                    func.sum(case((no_run & (CronExecution.claimed_at < lost_before), 1), else_=0)),
                )
                .select_from(CronExecution)
                .outerjoin(WorkflowRun, WorkflowRun.id == CronExecution.run_id)
                .where(CronExecution.claimed_at >= since)
                .group_by(WorkflowRun.status)
            ).all()
        by_status = {str(status): int(n) for status, n, _, _ in rows}
        total = sum(by_status.values())
        successful = sum(int(handed or 0) for _, _, handed, _ in rows)
        lost = sum(int(gone or 0) for _, _, _, gone in rows)
        return CronExecutionStats(
            total_executions=total,
            successful_executions=successful,
            lost_executions=lost,
            success_rate=successful / total * 100.0 if total else 0.0,
            by_status=by_status,
        )

    # -- recovery ---------------------------------------------------------------------------------------
    def lost_executions(
        self, *, claimed_before: datetime, claimed_after: datetime, max_attempts: int, limit: int = 100
    ) -> list[LostExecution]:
        """Due times claimed without a run in (``claimed_after``, ``claimed_before``), with fewer than
        ``max_attempts`` recovery attempts, of schedules that still exist and are enabled; oldest first."""
        with self.db.session() as s:
            rows = s.execute(
                select(CronExecution, CronSchedule)
                .join(CronSchedule, CronSchedule.id == CronExecution.schedule_id)
                .where(
                    CronExecution.handoff_pending.is_(True),
                    CronExecution.run_id.is_(None),
                    CronExecution.claimed_at < claimed_before,
                    CronExecution.claimed_at > claimed_after,
                    CronExecution.recovery_attempts < max_attempts,
                    CronSchedule.enabled.is_(True),
                )
                .order_by(CronExecution.scheduled_time, CronExecution.id)
                .limit(limit)
            ).all()
            return [
                LostExecution(
                    e.id, e.public_id, e.scheduled_time, e.claimed_at, int(e.recovery_attempts), schedule_record(sc)
                )
                for e, sc in rows
            ]

    def claim_recovery(self, lost: LostExecution, now: datetime, *, stale_before: datetime) -> bool:
        """Take the re-fire of ``lost`` (counting one attempt); ``False`` if another process has it, or it
        was recovered meanwhile. A claim older than ``stale_before`` (its owner died) may be taken over."""
        with self.db.session() as s:
            res = s.execute(
                update(CronExecution)
                .where(
                    CronExecution.id == lost.row_id,
                    CronExecution.handoff_pending.is_(True),
                    CronExecution.recovery_attempts == lost.recovery_attempts,
                    (CronExecution.recovery_claimed_at.is_(None)) | (CronExecution.recovery_claimed_at < stale_before),
                )
                .values(recovery_attempts=CronExecution.recovery_attempts + 1, recovery_claimed_at=now, updated_at=now)
            )
            return rowcount(res) == 1

    def complete_handoff(self, lost: LostExecution, run_id: str, now: datetime) -> None:
        """Link the re-fired run to its execution (and the run to its schedule): no longer lost."""
        with self.db.session() as s:
            s.execute(
                update(CronExecution)
                .where(CronExecution.id == lost.row_id)
                .values(run_id=run_id, handoff_pending=False, recovery_claimed_at=None, updated_at=now)
            )
            s.execute(update(WorkflowRun).where(WorkflowRun.id == run_id).values(cron_schedule_id=lost.schedule.row_id))

    def release_recovery(self, lost: LostExecution) -> None:
        """A re-fire failed: let the next recovery pass try again (the attempt stays counted)."""
        with self.db.session() as s:
            s.execute(update(CronExecution).where(CronExecution.id == lost.row_id).values(recovery_claimed_at=None))
