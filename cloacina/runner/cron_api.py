"""Cron management methods of ``DefaultRunner``, and the function that starts its cron scheduler.

Schedules live in the database, so they survive restarts and every runner or poller sharing the database
fires them (each due time once). Timestamps in the returned dicts are ISO-8601 UTC text, as in the trigger API.
Expressions have 5 fields, or 6 with seconds first; see :mod:`cloacina.scheduling.cron_math`.

Example (once DefaultRunner mixes in :class:`CronAPI`)::

    with cloaca.DefaultRunner("sqlite://app.db") as runner:
        schedule_id = runner.register_cron_workflow("nightly_report", "0 2 * * *", "Europe/Berlin")
        runner.get_cron_schedule(schedule_id)["next_run_at"]      # '2024-07-06T00:00:00+00:00'
        runner.get_cron_execution_history(schedule_id, limit=10)
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cloacina.errors import DefinitionError
from cloacina.runner.paging import check_paging
from cloacina.scheduling import cron_math
from cloacina.scheduling.cron import CATCHUP_POLICIES, CronScheduler
from cloacina.store.cron import CronScheduleRecord, CronStore
from cloacina.timestamps import iso_values, utcnow

if TYPE_CHECKING:
    from cloacina.definitions.workflow import Workflow
    from cloacina.deployment.wiring import Deployment
    from cloacina.runner.config import DefaultRunnerConfig

log = logging.getLogger("cloacina.cron")


def _schedule_dict(record: CronScheduleRecord) -> dict[str, Any]:
    return iso_values(record.to_dict())


def _check_schedule_id(schedule_id: int) -> None:
    if not isinstance(schedule_id, int) or isinstance(schedule_id, bool):
        raise TypeError(f"schedule id must be an int, got {type(schedule_id).__name__}")


def _check_policy(policy: str) -> None:
    if policy not in CATCHUP_POLICIES:
        raise DefinitionError(f"catch-up policy must be 'skip' or 'run_all', got {policy!r}", subject=str(policy))


class CronAPI:
    """Mixed into DefaultRunner; uses its public ``deployment``, ``config`` and ``cron_scheduler`` (``None`` when
    ``enable_cron_scheduling`` is off: schedules are then stored but fired by other processes)."""

    deployment: Deployment
    config: DefaultRunnerConfig
    cron_scheduler: CronScheduler | None

    @property
    def _cron_store(self) -> CronStore:
        return self.deployment.cron

    def _notify_cron(self) -> None:
        if self.cron_scheduler is not None:
            self.cron_scheduler.notify()

    def _require_schedule(self, schedule_id: int) -> CronScheduleRecord:
        _check_schedule_id(schedule_id)
        found = self._cron_store.get_schedule(schedule_id)
        if found is None:
            raise ValueError(f"unknown cron schedule {schedule_id}")
        return found

    # -- schedules --------------------------------------------------------------------------------------
    def register_cron_workflow(
        self,
        workflow: str | Workflow,
        cron_expression: str,
        timezone: str = "UTC",
        *,
        catchup_policy: str | None = None,
    ) -> int:
        """Run ``workflow`` at every due time of ``cron_expression`` in ``timezone``; returns the schedule id.

        Idempotent: registering the same (workflow, expression, time zone) again returns the existing id (so an
        app that registers its schedules at every start does not multiply them); a ``catchup_policy`` given
        explicitly is applied to it. ``ValueError`` names an unknown workflow, a bad expression or time zone.
        """
        name = self.deployment.workflows.get(workflow).name  # raises WorkflowNotFoundError (a ValueError) naming it
        spec = cron_math.validate_cron(cron_expression, timezone)
        policy = catchup_policy if catchup_policy is not None else self.config.cron_catchup_policy
        _check_policy(policy)
        next_run_at = cron_math.next_due(spec.expression, spec.timezone, utcnow())
        store = self._cron_store
        record, created = store.get_or_create_schedule(name, spec.expression, spec.timezone, policy, next_run_at)
        if not created and catchup_policy is not None and record.catchup_policy != catchup_policy:
            store.update_schedule(record.id, catchup_policy=catchup_policy)
        if created:
            log.info(
                "cron schedule %s registered: %s at %r (%s), next run %s",
                record.id,
                name,
                spec.expression,
                spec.timezone,
                next_run_at.isoformat(),
            )
            self._notify_cron()
        return record.id

    def list_cron_schedules(
        self, enabled_only: bool = False, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Schedules in id order: id, workflow_name, cron_expression, timezone, enabled, catchup_policy,
        next_run_at, last_run_at, created_at, updated_at."""
        check_paging(limit, offset)
        records = self._cron_store.list_schedules(enabled_only=enabled_only, limit=limit, offset=offset)
        return [_schedule_dict(r) for r in records]

    def get_cron_schedule(self, schedule_id: int) -> dict[str, Any] | None:
        """One schedule (keys as in :meth:`list_cron_schedules`), or ``None`` if there is none."""
        _check_schedule_id(schedule_id)
        record = self._cron_store.get_schedule(schedule_id)
        return _schedule_dict(record) if record is not None else None

    def update_cron_schedule(
        self,
        schedule_id: int,
        cron_expression: str | None = None,
        timezone: str | None = None,
        *,
        catchup_policy: str | None = None,
    ) -> dict[str, Any]:
        """Change a schedule's expression, time zone and/or catch-up policy; returns the updated schedule.

        A new expression or zone recomputes ``next_run_at`` from now (times missed under the old one are not
        caught up). ``ValueError`` for an unknown id or an invalid value.
        """
        current = self._require_schedule(schedule_id)
        if catchup_policy is not None:
            _check_policy(catchup_policy)
        changes: dict[str, Any] = {"catchup_policy": catchup_policy}
        if cron_expression is not None or timezone is not None:
            spec = cron_math.validate_cron(
                cron_expression if cron_expression is not None else current.cron_expression,
                timezone if timezone is not None else current.timezone,
            )
            changes.update(
                cron_expression=spec.expression,
                timezone=spec.timezone,
                next_run_at=cron_math.next_due(spec.expression, spec.timezone, utcnow()),
            )
        updated = self._cron_store.update_schedule(schedule_id, **changes)
        if updated is None:
            raise ValueError(f"unknown cron schedule {schedule_id}")
        self._notify_cron()
        return _schedule_dict(updated)

    def set_cron_schedule_enabled(self, schedule_id: int, enabled: bool) -> None:
        """Enable or disable a schedule. Enabling starts from now: times passed while disabled are not run."""
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        current = self._require_schedule(schedule_id)
        store = self._cron_store
        if enabled and not current.enabled:
            following = cron_math.next_due(current.cron_expression, current.timezone, utcnow())
            found = store.set_enabled(schedule_id, True, next_run_at=following)
        else:
            found = store.set_enabled(schedule_id, enabled)
        if not found:
            raise ValueError(f"unknown cron schedule {schedule_id}")
        self._notify_cron()

    def delete_cron_schedule(self, schedule_id: int) -> None:
        """Delete a schedule and its execution history (the runs it started are kept)."""
        _check_schedule_id(schedule_id)
        if not self._cron_store.delete_schedule(schedule_id):
            raise ValueError(f"unknown cron schedule {schedule_id}")
        self._notify_cron()

    # -- history ----------------------------------------------------------------------------------------
    def get_cron_execution_history(self, schedule_id: int, limit: int = 100) -> list[dict[str, Any]]:
        """Claimed due times of a schedule, newest first: id, schedule_id, scheduled_time, claimed_at, run_id,
        status (the run's status; ``None`` if the run was deleted)."""
        _check_schedule_id(schedule_id)
        check_paging(limit, 0)
        return [iso_values(e.to_dict()) for e in self._cron_store.execution_history(schedule_id, limit)]

    def get_cron_execution_stats(self, since: datetime) -> dict[str, Any]:
        """Executions claimed since ``since`` (an aware datetime), over all schedules: total_executions,
        successful_executions, failed_executions, in_progress_executions, lost_executions, success_rate (% of
        finished runs that completed), by_status."""
        if not isinstance(since, datetime):
            raise TypeError(f"since must be a datetime, got {type(since).__name__}")
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError("since must be an aware datetime, e.g. datetime.now(UTC) - timedelta(days=1)")
        return iso_values(self._cron_store.execution_stats(since).to_dict())
