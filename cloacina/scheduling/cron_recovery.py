"""CronRecovery: re-fires cron due times that were claimed but never handed off to a run.

A due time is normally claimed together with its run, in one transaction, so nothing can be lost between the
two. The one way a claimed due time ends up without a run is a scheduler that cannot resolve the schedule's
workflow (a schedule registered before its package was deployed): :class:`cloacina.scheduling.cron.CronScheduler`
then claims it alone and moves on. Every ``interval_s`` this loop looks for such executions that are

- older than ``lost_threshold_s`` (``cron_lost_threshold_minutes``) and younger than ``max_age_s``
  (``cron_max_recovery_age_seconds``): older ones are abandoned;
- tried fewer than ``max_attempts`` times (``cron_max_recovery_attempts``; the count lives on the row, so a
  restart does not reset it);
- of a schedule that still exists and is enabled,

and re-fires each: the same context a timely fire would have had, then the run is linked to the execution.
Several processes may run this loop: a compare-and-set claim on the row (which counts the attempt) lets one of
them re-fire it; a claim whose owner died is taken over after ``CLAIM_STALE_S``. A process that dies between
creating the run and linking it leaves a run that a later pass may create again (recovery is at-least-once).

Like the other services, all logic is in :meth:`CronRecovery.run_once` (tests pass their own ``now``);
:meth:`start` runs it at once and then every ``interval_s`` on a daemon thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cloacina.definitions.workflow import Workflow
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling.cron import cron_run_context
from cloacina.store.cron import CronStore, LostExecution
from cloacina.timestamps import utcnow

log = logging.getLogger("cloacina.cron")
CLAIM_STALE_S = 120.0  # a recovery claim not released within this long belongs to a dead process
BATCH = 100  # lost executions looked at per pass


@dataclass
class RecoveryReport:
    """Public ids of the executions one pass re-fired, and of those whose re-fire failed (tried again later
    while attempts remain)."""

    recovered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.recovered or self.failed)


class CronRecovery:
    """Re-fires lost cron executions; safe to run in several processes at once."""

    def __init__(
        self,
        store: CronStore,
        coordinator: RunCoordinator,
        resolve_workflow: Callable[[str], Workflow],
        *,
        interval_s: float = 300.0,
        lost_threshold_s: float = 600.0,
        max_age_s: float = 86_400.0,
        max_attempts: int = 3,
        run_deadline_s: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.store = store
        self.coordinator = coordinator
        self.resolve_workflow = resolve_workflow
        self.interval_s = interval_s
        self.lost_threshold_s = lost_threshold_s
        self.max_age_s = max_age_s
        self.max_attempts = max_attempts
        self.run_deadline_s = run_deadline_s
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> RecoveryReport:
        """Re-fire every lost execution due for recovery at ``now``."""
        now = now if now is not None else self.clock()
        report = RecoveryReport()
        if self.max_attempts < 1:
            return report
        lost = self.store.lost_executions(
            claimed_before=now - timedelta(seconds=self.lost_threshold_s),
            claimed_after=now - timedelta(seconds=self.max_age_s),
            max_attempts=self.max_attempts,
            limit=BATCH,
        )
        stale_before = now - timedelta(seconds=CLAIM_STALE_S)
        for execution in lost:
            if not self.store.claim_recovery(execution, now, stale_before=stale_before):
                continue  # another process is on it, or it was recovered meanwhile
            if self._refire(execution, now):
                report.recovered.append(execution.id)
            else:
                report.failed.append(execution.id)
        return report

    def _refire(self, lost: LostExecution, now: datetime) -> bool:
        schedule = lost.schedule
        fields = {"schedule_id": schedule.id, "workflow": schedule.workflow_name}
        attempt = lost.recovery_attempts + 1
        try:
            workflow = self.resolve_workflow(schedule.workflow_name)
            run_id = self.coordinator.create_run(
                workflow, cron_run_context(schedule, lost.scheduled_time), deadline_s=self.run_deadline_s
            )
            assert run_id is not None  # no claim is attached, so creation cannot be refused
        except Exception as exc:
            self.store.release_recovery(lost)
            log.error(
                "cron recovery of schedule %s at %s failed (attempt %d of %d): %s",
                schedule.id,
                lost.scheduled_time.isoformat(),
                attempt,
                self.max_attempts,
                exc,
                extra=fields,
            )
            return False
        self.store.complete_handoff(lost, run_id, now)
        log.warning(
            "cron recovery re-fired schedule %s (%s) for %s (attempt %d)",
            schedule.id,
            schedule.workflow_name,
            lost.scheduled_time.isoformat(),
            attempt,
            extra={**fields, "run_id": run_id},
        )
        return True

    # -- the loop ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="cloacina-cron-recovery", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():  # a pass at start, then one per interval
            try:
                self.run_once()
            except Exception as exc:  # the database is briefly unavailable: log, try again next interval
                log.warning("cron recovery pass failed (will retry): %s", exc)
            self._stop.wait(self.interval_s)

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop the loop. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
