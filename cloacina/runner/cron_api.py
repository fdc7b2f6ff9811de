"""Cron management methods of ``DefaultRunner``, as in cloaca.

Schedules live in the database, so they survive restarts and every runner or poller sharing the database fires
them (each due time once). Ids are UUID strings; times in the returned dicts are RFC 3339 text in UTC.
Expressions have 5 fields, or 6 with seconds first; see :mod:`cloacina.scheduling.cron_math`. With
``enable_cron_scheduling=False`` every method here raises ``ValueError``.

Example (once DefaultRunner mixes in :class:`CronAPI`)::

    with cloaca.DefaultRunner("sqlite://app.db") as runner:
        schedule_id = runner.register_cron_workflow("nightly_report", "0 2 * * *", "Europe/Berlin")
        runner.get_cron_schedule(schedule_id)["next_run_at"]      # '2024-07-06T00:00:00+00:00'
        runner.get_cron_execution_history(schedule_id, 10, None)
        runner.get_cron_execution_stats("2024-07-01T00:00:00Z")
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cloacina.context import Context
from cloacina.errors import DefinitionError
from cloacina.runner.errors import CronDisabledError, operation
from cloacina.runner.paging import paging
from cloacina.runner.results import rfc3339
from cloacina.scheduling import cron_math
from cloacina.scheduling.cron import CATCHUP_POLICIES, CronScheduler
from cloacina.store.cron import CronScheduleRecord, CronStore
from cloacina.timestamps import utcnow

if TYPE_CHECKING:
    from cloacina.definitions.workflow import Workflow
    from cloacina.deployment.wiring import Deployment
    from cloacina.runner.config import DefaultRunnerConfig

log = logging.getLogger("cloacina.cron")
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _times(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: rfc3339(value) if isinstance(value, datetime) else value for key, value in record.items()}


def schedule_dicts(
    store: CronStore, enabled_only: bool | None = None, limit: int | None = None, offset: int | None = None
) -> list[dict[str, Any]]:
    """Schedules as the API returns them, newest first (also what ``cloacina cron list`` prints)."""
    limit, offset = paging(limit, offset)
    if enabled_only is not None and not isinstance(enabled_only, bool):
        raise TypeError(f"enabled_only must be True, False or None, got {enabled_only!r}")
    records = store.list_schedules(enabled_only=bool(enabled_only), limit=limit, offset=offset)
    return [_times(r.to_dict()) for r in records]


def parse_schedule_id(schedule_id: object) -> str:
    """The canonical (lower-case, hyphenated) form of a schedule or execution id; ``ValueError`` if malformed."""
    if not isinstance(schedule_id, str):
        raise TypeError(f"schedule id must be a UUID string, got {type(schedule_id).__name__}")
    try:
        return str(uuid.UUID(schedule_id))
    except ValueError:
        raise ValueError(f"Invalid schedule ID: {schedule_id!r} is not a UUID") from None


def parse_since(since: object) -> datetime:
    """An RFC 3339 string with ``Z`` or ``±hh:mm`` (an aware ``datetime`` is accepted too); else ``ValueError``.

    >>> parse_since("2025-03-01T02:00:00.5+01:00").isoformat()
    '2025-03-01T01:00:00.500000+00:00'
    """
    if isinstance(since, datetime):
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError("since must be an aware datetime or an RFC 3339 string such as '2025-03-01T00:00:00Z'")
        return since.astimezone(UTC)
    if not isinstance(since, str):
        raise TypeError(f"since must be an RFC 3339 string, got {type(since).__name__}")
    match = _RFC3339.match(since.strip())
    if match is None:
        raise ValueError(f"Invalid datetime format: {since!r} is not RFC 3339 (e.g. '2025-03-01T00:00:00Z')")
    day, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # datetime keeps microseconds
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{day}T{clock}{fraction}{offset}").astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"Invalid datetime format: {since!r}: {exc}") from None


def _check_policy(policy: str) -> None:
    if policy not in CATCHUP_POLICIES:
        raise DefinitionError(f"catch-up policy must be 'skip' or 'run_all', got {policy!r}", subject=str(policy))


def _workflow_name(workflow: object) -> str:
    name = getattr(workflow, "name", workflow)  # a Workflow object names itself (cloacina extension)
    if not isinstance(name, str):
        raise TypeError(f"workflow_name must be a str, got {type(workflow).__name__}")
    if not name.strip():
        raise ValueError("workflow_name must not be empty")
    return name


def _params(params: object) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Context):
        return params.to_dict()
    if isinstance(params, Mapping):
        return Context(params).to_dict()  # the same JSON checks as a Context
    raise TypeError(f"params must be a Context (or a dict), got {type(params).__name__}")


class CronAPI:
    """Mixed into DefaultRunner; uses its ``deployment``, ``config`` and ``cron_scheduler`` (``None`` unless this
    runner fires schedules itself)."""

    deployment: Deployment
    config: DefaultRunnerConfig
    cron_scheduler: CronScheduler | None

    def _cron_store(self) -> CronStore:
        if not self.config.enable_cron_scheduling:
            raise CronDisabledError(
                "Cron scheduling not enabled: create the runner with DefaultRunnerConfig(enable_cron_scheduling=True)"
            )
        return self.deployment.cron

    def _notify_cron(self) -> None:
        if self.cron_scheduler is not None:
            self.cron_scheduler.notify()

    def _require_schedule(self, store: CronStore, schedule_id: str, operation: str) -> CronScheduleRecord:
        """The schedule, else ``ValueError("<operation>: unknown cron schedule <id>")``: the words of the
        operation asked for (cloaca's "Failed to update ..." even where the update reads first)."""
        found = store.get_schedule(schedule_id)
        if found is None:
            raise ValueError(f"{operation}: unknown cron schedule {schedule_id}")
        return found

    def _create(
        self,
        workflow_name: object,
        cron_expression: str,
        timezone: str,
        catchup_policy: str | None,
        instance_name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> str:
        store = self._cron_store()
        name = _workflow_name(workflow_name)
        spec = cron_math.validate_cron(cron_expression, timezone)
        policy = catchup_policy if catchup_policy is not None else self.config.cron_catchup_policy
        _check_policy(policy)
        next_run_at = cron_math.next_due(spec.expression, spec.timezone, utcnow())
        record = store.create_schedule(
            name,
            spec.expression,
            spec.timezone,
            policy,
            next_run_at,
            instance_name=instance_name,
            params=params,
        )
        log.info(
            "cron schedule %s registered: %s%s at %r (%s), next run %s",
            record.id,
            name,
            f" instance {instance_name!r}" if instance_name else "",
            spec.expression,
            spec.timezone,
            next_run_at.isoformat(),
        )
        self._notify_cron()
        return record.id

    # -- schedules --------------------------------------------------------------------------------------
    @operation("Failed to register cron workflow")
    def register_cron_workflow(
        self,
        workflow_name: str | Workflow,
        cron_expression: str,
        timezone: str = "UTC",
        *,
        catchup_policy: str | None = None,
    ) -> str:
        """Run ``workflow_name`` at every due time of ``cron_expression`` in ``timezone``; returns the id (a
        UUID string) of a **new** schedule on every call. The workflow need not be registered yet (a run is
        created once it is). ``ValueError`` for a bad expression, time zone or catch-up policy."""
        return self._create(workflow_name, cron_expression, timezone, catchup_policy)

    @operation("Failed to register workflow instance")
    def register_workflow_instance(
        self,
        workflow_name: str | Workflow,
        instance_name: str,
        cron_expression: str,
        timezone: str,
        params: Context | Mapping[str, Any] | None,
        *,
        catchup_policy: str | None = None,
    ) -> str:
        """A named schedule of ``workflow_name`` whose runs start with ``params`` (a ``Context``) as top-level
        keys (the scheduler's keys win). ``ValueError`` if ``(workflow_name, instance_name)`` exists already."""
        if not isinstance(instance_name, str) or not instance_name.strip():
            raise ValueError(f"instance_name must be a non-empty str, got {instance_name!r}")
        return self._create(workflow_name, cron_expression, timezone, catchup_policy, instance_name, _params(params))

    @operation("Failed to list cron schedules")
    def list_cron_schedules(
        self, enabled_only: bool | None = None, limit: int | None = None, offset: int | None = None
    ) -> list[dict[str, Any]]:
        """Schedules (instances included), newest first: id, workflow_name, cron_expression, timezone, enabled,
        catchup_policy, next_run_at, last_run_at, created_at, updated_at (and instance_name, params).
        ``None`` means ``False``, 100 and 0."""
        return schedule_dicts(self._cron_store(), enabled_only, limit, offset)

    @operation("Failed to get cron schedule")
    def get_cron_schedule(self, schedule_id: str) -> dict[str, Any]:
        """One schedule (keys as in :meth:`list_cron_schedules`); ``ValueError`` if the id is malformed or names
        no schedule."""
        store = self._cron_store()
        return _times(
            self._require_schedule(store, parse_schedule_id(schedule_id), "Failed to get cron schedule").to_dict()
        )

    @operation("Failed to update cron schedule")
    def update_cron_schedule(
        self,
        schedule_id: str,
        cron_expression: str | None,
        timezone: str | None,
        *,
        catchup_policy: str | None = None,
    ) -> None:
        """Change a schedule's expression and time zone (``None`` keeps one; cloacina extension) and optionally
        its catch-up policy. ``next_run_at`` is recomputed from now (times missed under the old expression are
        not caught up). ``ValueError`` for an unknown id or an invalid value."""
        store = self._cron_store()
        current = self._require_schedule(store, parse_schedule_id(schedule_id), "Failed to update cron schedule")
        if catchup_policy is not None:
            _check_policy(catchup_policy)
        spec = cron_math.validate_cron(
            cron_expression if cron_expression is not None else current.cron_expression,
            timezone if timezone is not None else current.timezone,
        )
        updated = store.update_schedule(
            current.id,
            cron_expression=spec.expression,
            timezone=spec.timezone,
            catchup_policy=catchup_policy,
            next_run_at=cron_math.next_due(spec.expression, spec.timezone, utcnow()),
        )
        if updated is None:
            raise ValueError(f"Failed to update cron schedule: unknown cron schedule {current.id}")
        self._notify_cron()

    @operation("Failed to update cron schedule")
    def set_cron_schedule_enabled(self, schedule_id: str, enabled: bool) -> None:
        """Enable or disable a schedule (``ValueError`` for an unknown id). Enabling starts from now: times
        passed while disabled are not run."""
        store = self._cron_store()
        sid = parse_schedule_id(schedule_id)
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        current = self._require_schedule(store, sid, "Failed to update cron schedule")
        if enabled and not current.enabled:
            following = cron_math.next_due(current.cron_expression, current.timezone, utcnow())
            store.set_enabled(sid, True, next_run_at=following)
        else:
            store.set_enabled(sid, enabled)
        self._notify_cron()

    @operation("Failed to delete cron schedule")
    def delete_cron_schedule(self, schedule_id: str) -> None:
        """Delete a schedule and its execution history (the runs it started are kept); ``ValueError`` for an
        unknown id."""
        store = self._cron_store()
        sid = parse_schedule_id(schedule_id)
        if not store.delete_schedule(sid):
            raise ValueError(f"Failed to delete cron schedule: unknown cron schedule {sid}")
        self._notify_cron()

    # -- history ----------------------------------------------------------------------------------------
    @operation("Failed to get cron execution history")
    def get_cron_execution_history(
        self, schedule_id: str, limit: int | None = None, offset: int | None = None
    ) -> list[dict[str, Any]]:
        """Claimed due times of a schedule, newest first: id, schedule_id, scheduled_time, claimed_at,
        workflow_execution_id (the run id, or ``None``), created_at, updated_at (and run_id, status: the run's
        status). ``None`` means 100 and 0; an unknown schedule has none."""
        store = self._cron_store()
        sid = parse_schedule_id(schedule_id)
        limit, offset = paging(limit, offset)
        return [_times(e.to_dict()) for e in store.execution_history(sid, limit, offset)]

    @operation("Failed to get cron execution stats")
    def get_cron_execution_stats(self, since: str | datetime) -> dict[str, Any]:
        """Executions claimed since ``since`` (RFC 3339 with ``Z`` or ``±hh:mm``), over all schedules:
        total_executions, successful_executions (handed off to a run), lost_executions (no run, claimed over
        ten minutes ago), success_rate (successful/total in percent, 0.0 if none); and by_status."""
        store = self._cron_store()
        return store.execution_stats(parse_since(since)).to_dict()
