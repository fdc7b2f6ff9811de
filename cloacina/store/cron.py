"""Repository for cron schedules, their claimed due times (executions) and cron recovery's bookkeeping.

Every method is one transaction and returns frozen dataclasses, never ORM objects. Schedules and executions are
addressed by their public UUID (``id`` in the records); the integer keys (``row_id``) stay inside the store and
the run-creation claim (:class:`cloacina.store.runs.CronClaim`).

Due times are *claimed* elsewhere: :meth:`cloacina.store.runs.RunStore.create_run` with a ``CronClaim`` inserts
the run and its ``cron_executions`` row together, and the unique (schedule_id, scheduled_time) decides which of N
schedulers fires a due time. A due time whose run cannot be created (its workflow is unknown here) is claimed
alone (:meth:`CronStore.claim_without_run`); cron recovery re-fires it later. The schedule's cursor
(``next_run_at``) only moves forward, with a guarded ``UPDATE ... WHERE next_run_at = <what I read>``.

Change listeners: a write that can make a schedule due sooner (create, update, enable or disable, delete) calls
every listener added with :meth:`CronStore.add_change_listener` once it has committed. A cron scheduler listens on
the store of its process, so whatever registers a schedule through that store (the runner's cron API, the package
reconciler, a poller's package sync) wakes it at once instead of at its next pass. Other processes are not told:
their schedulers read the schedule at their next pass (at most ``cron_poll_interval_s`` later).

Example::

    store = CronStore(db)
    schedule = store.create_schedule("nightly", "0 2 * * *", "Europe/Berlin", "skip", next_run)
    store.advance_schedule(schedule.id, expected_next_run_at=next_run, next_run_at=following, last_run_at=next_run)
    store.execution_history(schedule.id, limit=10)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloacina.errors import DefinitionError
from cloacina.store.cron_executions import CronExecutions
from cloacina.store.cron_records import (
    LOST_AFTER,
    CronExecutionRecord,
    CronExecutionStats,
    CronScheduleRecord,
    LostExecution,
    schedule_record,
)
from cloacina.store.database import Database, rowcount
from cloacina.store.models import CronExecution, CronSchedule
from cloacina.timestamps import utcnow

__all__ = [
    "LOST_AFTER",
    "CronExecutionRecord",
    "CronExecutionStats",
    "CronScheduleRecord",
    "CronStore",
    "LostExecution",
]

_UNSET: Any = object()
log = logging.getLogger("cloacina.cron")


class CronStore(CronExecutions):
    """Reads and writes cron schedules (and, mixed in, their executions); every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: tuple[Callable[[], None], ...] = ()

    # -- change listeners -------------------------------------------------------------------------------
    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every committed schedule change made through this store (see module doc)."""
        self._listeners = (*self._listeners, listener)

    def remove_change_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (no-op if it was not added)."""
        self._listeners = tuple(fn for fn in self._listeners if fn != listener)

    def _changed(self) -> None:
        for listener in self._listeners:  # a snapshot: the tuple is replaced, never mutated
            try:
                listener()
            except Exception:  # the write has committed; a listener's bug must not make it look failed
                log.exception("cron schedule change listener failed")

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
                record = self._insert(
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
        self._changed()
        return record

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
                return schedule_record(existing), False
            record = self._insert(
                s, workflow_name, cron_expression, timezone, catchup_policy, next_run_at, True, None, None
            )
        self._changed()
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
        return schedule_record(row)

    def get_schedule(self, schedule_id: str) -> CronScheduleRecord | None:
        with self.db.session() as s:
            row = s.scalars(select(CronSchedule).where(CronSchedule.public_id == schedule_id)).one_or_none()
            return schedule_record(row) if row is not None else None

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
            return [schedule_record(r) for r in s.scalars(q).all()]

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
            record = schedule_record(row)
        self._changed()
        return record

    def set_enabled(self, schedule_id: str, enabled: bool, *, next_run_at: datetime | None = _UNSET) -> bool:
        """Enable or disable a schedule (optionally moving its cursor); ``False`` if it does not exist."""
        values: dict[str, Any] = {"enabled": bool(enabled), "updated_at": utcnow()}
        if next_run_at is not _UNSET:
            values["next_run_at"] = next_run_at
        with self.db.session() as s:
            res = s.execute(update(CronSchedule).where(CronSchedule.public_id == schedule_id).values(**values))
            found = rowcount(res) == 1
        if found:
            self._changed()
        return found

    def delete_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule and its execution history; the runs it started are kept."""
        with self.db.session() as s:
            row_id = s.scalars(select(CronSchedule.id).where(CronSchedule.public_id == schedule_id)).one_or_none()
            if row_id is None:
                return False
            s.execute(delete(CronExecution).where(CronExecution.schedule_id == row_id))
            s.execute(delete(CronSchedule).where(CronSchedule.id == row_id))
        self._changed()
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
