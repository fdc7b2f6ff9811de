"""Frozen records the cron repositories return (never ORM objects), and how a schedule row becomes one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloacina.store.models import CronSchedule

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


def schedule_record(row: CronSchedule) -> CronScheduleRecord:
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
