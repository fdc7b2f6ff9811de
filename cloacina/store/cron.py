"""Repository for cron schedules, their claimed due times (executions) and cron recovery's bookkeeping.

Every method is one transaction and returns frozen dataclasses, never ORM objects. Schedules and executions are
addressed by their public UUID (``id`` in the records); the integer keys (``row_id``) stay inside the store and
the run-creation claim (:class:`cloacina.store.runs.CronClaim`).

Due times are *claimed* elsewhere: :meth:`cloacina.store.runs.RunStore.create_run` with a ``CronClaim`` inserts
the run and its ``cron_executions`` row together, and the unique (schedule_id, scheduled_time) decides which of N
schedulers fires a due time. A due time whose run cannot be created (its workflow is unknown here) is claimed
alone (:meth:`CronStore.claim_without_run`); cron recovery re-fires it later. The schedule's cursor
(``next_run_at``) only moves forward, with a guarded ``UPDATE ... WHERE next_run_at = <what I read>``.

Example::

    store = CronStore(db)
    schedule = store.create_schedule("nightly", "0 2 * * *", "Europe/Berlin", "skip", next_run)
    store.advance_schedule(schedule.id, expected_next_run_at=next_run, next_run_at=following, last_run_at=next_run)
    store.execution_history(schedule.id, limit=10)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloacina.errors import DefinitionError
from cloacina.store.database import Database, rowcount
from cloacina.store.models import CronExecution, CronSchedule, WorkflowRun
from cloacina.timestamps import utcnow

_UNSET: Any = object()
LOST_AFTER = timedelta(minutes=10)  # a due time with no run this long after its claim counts as lost (stats)


@dataclass(frozen=True)
class CronScheduleRecord:
    """One row of ``cron_schedules``; ``id`` is its public UUID."""

    id: str
    workflow_name: str
    cron_expression: str
    timezone: str
    enabled: bool
    catchup_policy: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    instance_name: str | None = None
    params: dict[str, Any] | None = None
    row_id: int = field(default=0, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The public fields (the row id stays inside the store)."""
        return {
            "id": self.id,
            "workflow_name": self.workflow_name,
            "cron_expression": self.cron_expression,
            "timezone": self.timezone,
            "enabled": self.enabled,
            "catchup_policy": self.catchup_policy,
            "next_run_at": self.next_run_at,
            "last_run_at": self.last_run_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "instance_name": self.instance_name,
            "params": self.params,
        }


@dataclass(frozen=True)
class CronExecutionRecord:
    """One claimed due time, with the run it started (``run_id`` ``None``: no run, or the run was deleted)."""

    id: str
    schedule_id: str
    scheduled_time: datetime
    claimed_at: datetime
    run_id: str | None
    status: str | None  # the run's status
    updated_at: datetime
    handoff_pending: bool = False
    recovery_attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "schedule_id": self.schedule_id,
            "scheduled_time": self.scheduled_time,
            "claimed_at": self.claimed_at,
            "workflow_execution_id": self.run_id,
            "created_at": self.claimed_at,
            "updated_at": self.updated_at,
            "run_id": self.run_id,
            "status": self.status,
            "handoff_pending": self.handoff_pending,
            "recovery_attempts": self.recovery_attempts,
        }


@dataclass(frozen=True)
class CronExecutionStats:
    """Executions claimed at or after ``since`` (all schedules).

    ``successful_executions`` were handed off to a run; ``lost_executions`` have no run (never created, or
    deleted) and were claimed more than ten minutes ago; ``success_rate`` is successful/total in percent (0.0 if
    there are none). ``by_status`` counts them by their run's status (``"None"``: no run).
    """

    total_executions: int
    successful_executions: int
    lost_executions: int
    success_rate: float
    by_status: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_executions": self.total_executions,
            "successful_executions": self.successful_executions,
            "lost_executions": self.lost_executions,
            "success_rate": self.success_rate,
            "by_status": dict(self.by_status),
        }


@dataclass(frozen=True)
class LostExecution:
    """A due time claimed without a run, with what re-firing it needs."""

    row_id: int
    id: str
    scheduled_time: datetime
    claimed_at: datetime
    recovery_attempts: int
    schedule: CronScheduleRecord


def _record(row: CronSchedule) -> CronScheduleRecord:
    return CronScheduleRecord(
        id=row.public_id,
        workflow_name=row.workflow_name,
        cron_expression=row.cron_expression,
        timezone=row.timezone,
        enabled=bool(row.enabled),
        catchup_policy=row.catchup_policy,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        instance_name=row.instance_name,
        params=json.loads(row.params) if row.params is not None else None,
        row_id=row.id,
    )


class CronStore:
    """Reads and writes cron schedules and executions; every method is one transaction."""

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
        instance_name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> CronScheduleRecord:
        """Insert a new schedule (callers validate the expression and compute ``next_run_at``).

        ``DefinitionError`` (a ``ValueError``) if ``instance_name`` is already taken for ``workflow_name``.
        """
        try:
            with self.db.session() as s:
                return self._insert(
                    s,
                    workflow_name,
                    cron_expression,
                    timezone,
                    catchup_policy,
                    next_run_at,
                    enabled,
                    instance_name,
                    params,
                )
        except IntegrityError:
            if instance_name is None:
                raise
            raise DefinitionError(
                f"workflow {workflow_name!r} already has an instance named {instance_name!r}", subject=instance_name
            ) from None

    def get_or_create_schedule(
        self,
        workflow_name: str,
        cron_expression: str,
        timezone: str,
        catchup_policy: str,
        next_run_at: datetime | None,
    ) -> tuple[CronScheduleRecord, bool]:
        """The plain (not instance) schedule with this (workflow, expression, zone), created if absent; ``True``
        if created now. For code that declares its schedules at every start (``@trigger(cron=...)``).

        There is no unique constraint on that triple, so concurrent registrations are serialised instead: a
        transaction-scoped advisory lock on PostgreSQL, the database write lock (a no-op ``UPDATE``) on SQLite.
        """
        with self.db.session() as s:
            self._lock_registration(s, workflow_name, cron_expression, timezone)
            existing = s.scalars(
                select(CronSchedule)
                .where(
                    CronSchedule.workflow_name == workflow_name,
                    CronSchedule.cron_expression == cron_expression,
                    CronSchedule.timezone == timezone,
                    CronSchedule.instance_name.is_(None),
                )
                .order_by(CronSchedule.id)
                .limit(1)
            ).first()
            if existing is not None:
                return _record(existing), False
            record = self._insert(
                s, workflow_name, cron_expression, timezone, catchup_policy, next_run_at, True, None, None
            )
            return record, True

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
        instance_name: str | None,
        params: dict[str, Any] | None,
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
            instance_name=instance_name,
            params=json.dumps(params, sort_keys=True) if params is not None else None,
        )
        s.add(row)
        s.flush()
        return _record(row)

    def get_schedule(self, schedule_id: str) -> CronScheduleRecord | None:
        with self.db.session() as s:
            row = s.scalars(select(CronSchedule).where(CronSchedule.public_id == schedule_id)).one_or_none()
            return _record(row) if row is not None else None

    def list_schedules(
        self, *, enabled_only: bool = False, limit: int | None = 100, offset: int = 0
    ) -> list[CronScheduleRecord]:
        """Schedules, newest first; ``limit=None`` for all of them."""
        with self.db.session() as s:
            q = select(CronSchedule).order_by(CronSchedule.created_at.desc(), CronSchedule.id.desc()).offset(offset)
            if enabled_only:
                q = q.where(CronSchedule.enabled.is_(True))
            if limit is not None:
                q = q.limit(limit)
            return [_record(r) for r in s.scalars(q).all()]

    def update_schedule(
        self,
        schedule_id: str,
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
            res = s.execute(update(CronSchedule).where(CronSchedule.public_id == schedule_id).values(**values))
            if rowcount(res) != 1:
                return None
            row = s.scalars(
                select(CronSchedule)
                .where(CronSchedule.public_id == schedule_id)
                .execution_options(populate_existing=True)
            ).one()
            return _record(row)

    def set_enabled(self, schedule_id: str, enabled: bool, *, next_run_at: datetime | None = _UNSET) -> bool:
        """Enable or disable a schedule (optionally moving its cursor); ``False`` if it does not exist."""
        values: dict[str, Any] = {"enabled": bool(enabled), "updated_at": utcnow()}
        if next_run_at is not _UNSET:
            values["next_run_at"] = next_run_at
        with self.db.session() as s:
            res = s.execute(update(CronSchedule).where(CronSchedule.public_id == schedule_id).values(**values))
            return rowcount(res) == 1

    def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule and its execution history; the runs it started are kept."""
        with self.db.session() as s:
            row_id = s.scalars(select(CronSchedule.id).where(CronSchedule.public_id == schedule_id)).one_or_none()
            if row_id is None:
                return False
            s.execute(delete(CronExecution).where(CronExecution.schedule_id == row_id))
            s.execute(delete(CronSchedule).where(CronSchedule.id == row_id))
            return True

    def advance_schedule(
        self,
        schedule_id: str,
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
            res = s.execute(update(CronSchedule).where(CronSchedule.public_id == schedule_id, guard).values(**values))
            return rowcount(res) == 1

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
                LostExecution(e.id, e.public_id, e.scheduled_time, e.claimed_at, int(e.recovery_attempts), _record(sc))
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
