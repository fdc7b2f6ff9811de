"""CronScheduler: fires due cron times as workflow runs, once each however many schedulers share the database.

Each due time is *claimed* by inserting a ``cron_executions`` row, unique on (schedule_id, scheduled_time), in
the same transaction as its run (:class:`cloacina.store.runs.CronClaim`). N schedulers firing the same time
produce one run; the losers see ``None`` from ``create_run`` and count it as ``already_claimed``. The
schedule's cursor (``next_run_at``) is moved afterwards with a guarded update, so it only ever moves forward.
Firing before advancing makes a crash in between harmless: the restarted scheduler fires the same due times
again and the claims refuse them.

Catch-up, when a schedule is found with several due times passed (downtime, a long pause):

- ``skip`` (default): fire only the most recent due time (<= now), once; the older missed times are dropped
  (logged with their count). In normal operation the most recent due time *is* the one that just came due, so
  a scheduler waking a little late never loses it.
- ``run_all``: fire every missed time, oldest first, capped at ``max_catchup_executions``: the newest ones are
  kept and the number of dropped older ones is logged.

Either way the cursor then moves to the first due time after *now*. A due time whose workflow cannot be
resolved here (not deployed yet) is claimed without a run and the cursor moves on; cron recovery
(:mod:`cloacina.scheduling.cron_recovery`) re-fires it later. Other errors (database down) are logged with the
schedule id; that schedule is retried after ``poll_interval_s`` and the others go on.

A run's context is the schedule's instance ``params`` (if any) as flat keys, then ``scheduled_time`` (RFC 3339),
``schedule_id``, ``schedule_timezone`` and ``schedule_expression``, which always win (:func:`cron_run_context`).

The loop has the LoopService shape: all logic in :meth:`run_once` (tests call it with their own ``now``);
:meth:`start` runs it on a daemon thread that sleeps until the earliest ``next_run_at`` among enabled schedules
(at most ``poll_interval_s``; schedule rows are re-read on every pass), so a per-second schedule fires on time
while a loop with nothing due wakes once per ``poll_interval_s``. It wakes early on :meth:`notify`, which the
scheduler's own store calls after any schedule is created, changed, enabled or deleted through it
(:meth:`CronStore.add_change_listener`): a schedule registered in this process by the runner's cron API, the
package reconciler or a poller's package sync is seen at once. A schedule registered by another process is seen
at this loop's next pass, at most ``poll_interval_s`` later; whichever scheduler claims a due time first fires
it, so several processes still fire each due time once.

Example::

    scheduler = CronScheduler(CronStore(db), coordinator, registry.get_workflow, poll_interval_s=5.0)
    scheduler.run_once(datetime.now(UTC))   # or scheduler.start() ... scheduler.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cloacina.definitions.workflow import Workflow
from cloacina.execution.coordinator import RunCoordinator
from cloacina.scheduling import cron_math
from cloacina.store.cron import CronScheduleRecord, CronStore
from cloacina.store.runs import CronClaim
from cloacina.timestamps import utcnow

log = logging.getLogger("cloacina.cron")
CATCHUP_POLICIES = ("skip", "run_all")
DROPPED_COUNT_CAP = 10_000  # counting missed times is O(n); beyond this the log says "more than"
_MIN_SLEEP_S = 0.005
_TICK = timedelta(microseconds=1)
# Context keys the schedulers own: an instance's params never override them.
RESERVED_FIRE_KEYS = frozenset(
    ("scheduled_time", "schedule_id", "schedule_timezone", "schedule_expression", "trigger_name", "triggered_at")
)


def cron_run_context(schedule: CronScheduleRecord, scheduled_time: datetime) -> dict[str, Any]:
    """The input context of the run for ``scheduled_time``: instance params first, the scheduler's keys win.

    >>> when = datetime(2025, 1, 1, tzinfo=UTC)
    >>> s = CronScheduleRecord("5f0c", "wf", "0 2 * * *", "UTC", True, "skip", None, None, when, when,
    ...                        params={"region": "eu", "schedule_id": "spoofed"})
    >>> ctx = cron_run_context(s, datetime(2025, 3, 1, 2, tzinfo=UTC))
    >>> ctx["region"], ctx["schedule_id"], ctx["scheduled_time"]
    ('eu', '5f0c', '2025-03-01T02:00:00+00:00')
    """
    context = {k: v for k, v in (schedule.params or {}).items() if k not in RESERVED_FIRE_KEYS}
    context.update(
        scheduled_time=scheduled_time.astimezone(UTC).isoformat(),
        schedule_id=schedule.id,
        schedule_timezone=schedule.timezone,
        schedule_expression=schedule.cron_expression,
    )
    return context


@dataclass(frozen=True)
class FireOutcome:
    """What one pass did for one schedule: runs created, due times another scheduler had claimed, due times
    claimed without a run (workflow unknown here: left to cron recovery), older missed times dropped."""

    schedule_id: str
    created: int
    already_claimed: int
    dropped: int
    unhanded: int = 0


class CronScheduler:
    """Fires cron schedules stored in the database. One per runner or poller process."""

    def __init__(
        self,
        store: CronStore,
        coordinator: RunCoordinator,
        resolve_workflow: Callable[[str], Workflow],
        *,
        poll_interval_s: float = 5.0,
        max_catchup_executions: int = 100,
        run_deadline_s: float | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s!r}")
        if max_catchup_executions < 1:
            raise ValueError(f"max_catchup_executions must be >= 1, got {max_catchup_executions!r}")
        self.store = store
        self.coordinator = coordinator
        self.resolve_workflow = resolve_workflow
        self.poll_interval_s = poll_interval_s
        self.max_catchup_executions = max_catchup_executions
        self.run_deadline_s = run_deadline_s
        self.clock = clock
        self.passes = 0  # totals since start, for logs and tests
        self.runs_created = 0
        self.claims_refused = 0
        self._retry_after: dict[str, datetime] = {}  # schedule id -> not before (after an error)
        self._next_wake: datetime | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ---------------------------------------------------------------------------------------
    def run_once(self, now_utc: datetime | None = None) -> int:
        """Fire every enabled schedule that is due at ``now_utc``; returns how many runs this call created."""
        now = now_utc if now_utc is not None else self.clock()
        if now.tzinfo is None:
            raise ValueError(f"now_utc must be an aware datetime, got naive {now!r}")
        self.passes += 1
        wake = now + timedelta(seconds=self.poll_interval_s)
        try:
            schedules = self.store.list_schedules(enabled_only=True, limit=None)
        except Exception as exc:
            log.warning("cron: cannot read schedules (%s); retrying in %gs", _first_line(exc), self.poll_interval_s)
            log.debug("cron: schedule read failure", exc_info=True)
            self._next_wake = wake
            return 0
        live = {s.id for s in schedules}
        self._retry_after = {sid: t for sid, t in self._retry_after.items() if sid in live}
        created = 0
        for schedule in schedules:
            retry_at = self._retry_after.get(schedule.id)
            if retry_at is not None and retry_at > now:
                wake = min(wake, retry_at)
                continue
            if schedule.next_run_at is None or schedule.next_run_at > now:
                if schedule.next_run_at is not None:
                    wake = min(wake, schedule.next_run_at)
                continue
            try:
                outcome, following = self.fire_schedule(schedule, now)
            except Exception:
                log.exception(
                    "cron schedule %s (workflow %r) failed; retrying in %gs",
                    schedule.id,
                    schedule.workflow_name,
                    self.poll_interval_s,
                    extra={"schedule_id": schedule.id, "workflow": schedule.workflow_name},
                )
                self._retry_after[schedule.id] = now + timedelta(seconds=self.poll_interval_s)
                continue
            self._retry_after.pop(schedule.id, None)
            created += outcome.created
            wake = min(wake, following)
        self._next_wake = wake
        return created

    def fire_schedule(self, schedule: CronScheduleRecord, now: datetime) -> tuple[FireOutcome, datetime]:
        """Fire the due times of one schedule (per its catch-up policy) and advance its cursor.

        Returns what happened and the schedule's new ``next_run_at``. Raises on any error, leaving the cursor
        where it was so the next pass retries (times already claimed are then refused, not run twice).
        """
        expr, tz = schedule.cron_expression, schedule.timezone
        assert schedule.next_run_at is not None
        window_start = schedule.next_run_at - _TICK  # due times t with next_run_at <= t <= now
        if schedule.catchup_policy == "run_all":
            times = cron_math.due_times(expr, tz, window_start, now, self.max_catchup_executions)
        else:
            if schedule.catchup_policy != "skip":
                log.warning(
                    "cron schedule %s has unknown catch-up policy %r; using skip",
                    schedule.id,
                    schedule.catchup_policy,
                )
            latest = cron_math.previous_due(expr, tz, now)
            times = [latest] if latest is not None and latest > window_start else []
        dropped = 0
        if times:
            dropped = cron_math.count_due_times(expr, tz, window_start, times[0] - _TICK, DROPPED_COUNT_CAP)
        if dropped:
            more = "more than " if dropped >= DROPPED_COUNT_CAP else ""
            log.warning(
                "cron schedule %s (%s): %s%d missed due time(s) before %s not run (catch-up policy %s)",
                schedule.id,
                schedule.workflow_name,
                more,
                dropped,
                times[0].isoformat(),
                schedule.catchup_policy,
                extra={"schedule_id": schedule.id, "workflow": schedule.workflow_name},
            )
        created = claimed_elsewhere = unhanded = 0
        workflow = self._workflow_or_none(schedule, len(times)) if times else None
        for scheduled_time in times:
            if workflow is None:  # claimed for cron recovery; a scheduler that knows the workflow may win it
                if self.store.claim_without_run(schedule, scheduled_time):
                    unhanded += 1
                else:
                    claimed_elsewhere += 1
                continue
            run_id = self.coordinator.create_run(
                workflow,
                cron_run_context(schedule, scheduled_time),
                cron=CronClaim(schedule.row_id, scheduled_time),
                deadline_s=self.run_deadline_s,
            )
            if run_id is None:
                claimed_elsewhere += 1
                continue
            created += 1
            log.info(
                "cron schedule %s fired %s for %s",
                schedule.id,
                schedule.workflow_name,
                scheduled_time.isoformat(),
                extra={"schedule_id": schedule.id, "run_id": run_id, "workflow": schedule.workflow_name},
            )
        self.runs_created += created
        self.claims_refused += claimed_elsewhere
        following = cron_math.next_due(expr, tz, now)
        if not self.store.advance_schedule(
            schedule.id,
            expected_next_run_at=schedule.next_run_at,
            next_run_at=following,
            last_run_at=times[-1] if times else None,
        ):
            log.debug("cron schedule %s was advanced or changed by someone else", schedule.id)
        return FireOutcome(schedule.id, created, claimed_elsewhere, dropped, unhanded), following

    def _workflow_or_none(self, schedule: CronScheduleRecord, due: int) -> Workflow | None:
        try:
            return self.resolve_workflow(schedule.workflow_name)
        except Exception as exc:
            log.error(
                "cron schedule %s: workflow %r cannot be run here (%s); %d due time(s) claimed for cron recovery",
                schedule.id,
                schedule.workflow_name,
                _first_line(exc),
                due,
                extra={"schedule_id": schedule.id, "workflow": schedule.workflow_name},
            )
            return None

    # -- the loop ---------------------------------------------------------------------------------------
    def seconds_until_next_pass(self, now_utc: datetime) -> float:
        """How long the loop sleeps after a pass: until the earliest due time, at most ``poll_interval_s``."""
        if self._next_wake is None:
            return self.poll_interval_s
        delay = (self._next_wake - now_utc).total_seconds()
        return min(self.poll_interval_s, max(_MIN_SLEEP_S, delay))

    def notify(self) -> None:
        """A schedule was added or changed: re-read schedules now instead of at the next due time."""
        self._wake.set()

    def start(self) -> None:
        """Run :meth:`run_once` on a daemon thread until :meth:`stop`; schedule changes made through the store
        wake it (:meth:`notify`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self.store.add_change_listener(self.notify)
        self._thread = threading.Thread(target=self._loop, name="cloacina-cron", daemon=True)
        self._thread.start()
        log.info("cron scheduler started (poll interval %gs)", self.poll_interval_s)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once(self.clock())
            except Exception:  # run_once handles its own errors; this is the last line of defence
                log.exception("cron scheduler pass failed")
                self._next_wake = None
            self._wake.wait(self.seconds_until_next_pass(self.clock()))
            # A notify() that lands between wait() returning and clear() is not lost: the pass that follows
            # re-reads every schedule anyway.
            self._wake.clear()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and wait (up to ``timeout_s``) for the current pass to end. Idempotent."""
        self._stopping.set()
        self.store.remove_change_listener(self.notify)
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("cron scheduler thread did not stop within %gs", timeout_s)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __repr__(self) -> str:
        return f"CronScheduler(poll_interval_s={self.poll_interval_s:g}, running={self.is_running})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
