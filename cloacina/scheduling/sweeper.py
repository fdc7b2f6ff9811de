"""Sweeper: finds work that was lost and puts it back, so no run stays unfinished forever.

- An attempt whose worker died (no heartbeat for ``heartbeat_timeout_s``) goes back to Ready and its run is
  republished: the task runs again elsewhere (tasks are at-least-once). After ``max_lost_attempts`` losses the
  task fails instead, so a task that kills its worker cannot loop forever.
- A run with no progress for ``stale_run_s`` that is not waiting for a live task or a retry delay lost its
  messages (the broker restarted empty, or publishing failed): it is republished from its SQL state. Finished
  tasks are never re-run: republishing only covers unfinished tasks, and every delivery checks SQL first.
- A run past its deadline (``workflow_timeout_seconds``) is failed.
- Runs waiting for a slot of their workflow's ``max_active_runs`` are promoted when slots are free: the process
  that ended a run promotes at once, but it may have died in between. A waiting run is never republished.
- After the database was unreachable, no attempt is declared lost until it has been back for
  ``heartbeat_timeout_s``: during the outage live workers could not write heartbeats either, and taking that
  silence for death would start a second copy of a task that is still running.

Like the other services, all logic is in :meth:`Sweeper.run_once`; :meth:`start` loops it on a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cloacina.execution.coordinator import RunCoordinator
from cloacina.store.recovery import RecoveryStore
from cloacina.timestamps import utcnow

log = logging.getLogger("cloacina.sweeper")


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.republished or self.expired or self.promoted)


class Sweeper:
    """Recovers lost attempts and lost runs; safe to run in several processes at once."""

    def __init__(
        self,
        recovery: RecoveryStore,
        coordinator: RunCoordinator,
        republish: Callable[[str], None],
        *,
        heartbeat_timeout_s: float = 30.0,
        stale_run_s: float = 30.0,
        interval_s: float = 5.0,
        max_lost_attempts: int = 3,
        clock: Callable[[], datetime] = utcnow,
        may_sweep: Callable[[], bool] = lambda: True,
        publish_tasks: Callable[[str, tuple[str, ...]], None] | None = None,
    ) -> None:
        self.recovery = recovery
        self.coordinator = coordinator
        self.republish = republish
        self.publish_tasks = publish_tasks
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.stale_run_s = stale_run_s
        self.interval_s = interval_s
        self.max_lost_attempts = max_lost_attempts
        self.clock = clock
        self.may_sweep = may_sweep
        self._store_back_at: datetime | None = datetime.min.replace(tzinfo=UTC)  # no outage seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> SweepReport:
        report = SweepReport()
        if not self.may_sweep():
            return report
        now = self.clock()
        if self._store_back_at is None:
            self._store_back_at = now
        cutoff = now - timedelta(seconds=self.heartbeat_timeout_s)
        heartbeats_trusted = self._store_back_at <= cutoff  # live workers had a full timeout to beat again
        for lost in self.recovery.lost_attempts(cutoff) if heartbeats_trusted else []:
            outcome = self.recovery.requeue_lost(lost, now, self.max_lost_attempts)
            if outcome is None:
                continue
            fields = {"run_id": lost.run_id, "task": lost.task_id, "attempt": lost.attempt}
            if outcome == "requeued":
                log.warning("attempt lost with its worker; running the task again", extra=fields)
                report.requeued.append(lost.run_id)
            else:
                log.error("attempt lost with its worker too many times; task failed", extra=fields)
                report.failed.append(lost.run_id)
            self._recover_lost(lost.run_id, lost.task_id, outcome, report)
        for run_id, timeout_s in self.recovery.expired_runs(now):
            self.coordinator.expire_run(run_id, timeout_s)
            report.expired.append(run_id)
        for stale in self.recovery.stale_runs(now - timedelta(seconds=self.stale_run_s), now):
            if stale.run_id in report.republished or not self.recovery.claim_stale_run(stale, now):
                continue
            log.warning(
                "run made no progress for %.0fs; republishing it",
                self.stale_run_s,
                extra={"run_id": stale.run_id, "workflow": stale.workflow_name},
            )
            self._republish(stale.run_id, report)
        self._promote(report)
        return report

    def _promote(self, report: SweepReport) -> None:
        """Promote the waiting runs of every workflow that has some, into whatever slots are free."""
        for waiting in self.recovery.waiting_workflows():
            try:
                workflow = self.coordinator.resolve_workflow(
                    waiting.workflow_name, waiting.workflow_version, waiting.package_fingerprint
                )
                promoted = self.coordinator.promote_waiting(workflow)
            except Exception:
                log.exception("promoting waiting runs of %r failed; will retry next sweep", waiting.workflow_name)
                continue
            if promoted:
                log.info(
                    "%d waiting run(s) of %r promoted by the sweeper",
                    len(promoted),
                    waiting.workflow_name,
                )
                report.promoted.extend(promoted)

    def _recover_lost(self, run_id: str, task_id: str, outcome: str, report: SweepReport) -> None:
        """Send a lost attempt's task again (``requeued``) or plan what its failure leads to (``failed``). Only
        that task: republishing the whole run would duplicate the messages of its other Ready tasks, still on
        their way (the sweeper republishes a run whose messages were lost once it made no progress)."""
        if self.publish_tasks is None:
            self._republish(run_id, report)
            return
        try:
            if outcome == "requeued":
                self.publish_tasks(run_id, (task_id,))
            else:
                self.coordinator.advance(run_id)
            report.republished.append(run_id)
        except Exception:
            log.exception("recovering the lost attempt of %s in run %s failed; will retry later", task_id, run_id)

    def _republish(self, run_id: str, report: SweepReport) -> None:
        if run_id in report.republished:
            return
        try:
            self.republish(run_id)
            report.republished.append(run_id)
        except Exception:
            log.exception("republishing run %s failed; will retry on the next sweep", run_id)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cloacina-sweeper", daemon=True)
            self._thread.start()

    def store_unavailable(self) -> None:
        """The database could not be reached (so neither could heartbeats be written): once it is back, wait
        ``heartbeat_timeout_s`` before declaring any attempt lost."""
        self._store_back_at = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                # Every replica checks the database, not only the one whose turn it is to sweep, so that whichever
                # sweeps first after an outage knows about it.
                self.recovery.db.ping()
                if self._store_back_at is None:
                    self._store_back_at = self.clock()
                self.run_once()
            except Exception as exc:  # e.g. the database is briefly unavailable: log, try again next interval
                self.store_unavailable()
                log.warning("sweep failed (will retry): %s", exc)

    def stop(self, wait_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait_s)
