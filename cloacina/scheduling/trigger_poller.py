"""TriggerScheduler: polls every registered trigger on its own interval and turns fires into runs.

Guarantees (DESIGN §3):
- Each trigger is polled every ``poll_interval``, measured from the (due) start of its previous poll: the loop's
  own lateness never accumulates and triggers keep their phases, so a thousand triggers registered over a second
  stay spread over the second instead of gathering into bursts; a poll later than half an interval re-anchors
  (no catch-up after a pause). The rules are in :mod:`cloacina.scheduling.poll_schedule`.
- Polls run on a pool of threads (async triggers on one event loop), never on the scheduling thread, so a slow or
  hung trigger delays nobody else. A poll still running after ``poll_timeout_s`` is recorded as an error; that
  trigger is not polled again until the hung call returns (a second call would most likely hang too).
- A poll that raises, times out or returns the wrong type is logged with the trigger's name and reason,
  counted on the schedule row, and polling goes on.
- A fire with ``allow_concurrent=False`` creates its run through a SQL claim on (trigger, context hash); a
  refused claim is a *dedup skip*, counted, never an error. The key frees in the transaction that ends the run.

The loop follows the LoopService shape: :meth:`run_once` does one pass (used directly by tests), and
:meth:`start` runs it on a daemon thread until :meth:`stop`.

>>> # Typical use is through DefaultRunner; see tests/test_triggers.py for direct use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import Any

from cloacina.context import context_hash
from cloacina.definitions.packages import package_workflow
from cloacina.definitions.trigger import TriggerDefinition, TriggerResult, to_trigger_result
from cloacina.definitions.workflow import Workflow
from cloacina.errors import TriggerPollError
from cloacina.execution.coordinator import RunCoordinator
from cloacina.execution.task_call import describe_error
from cloacina.scheduling.poll_book import PollBook
from cloacina.scheduling.poll_gate import PollGate
from cloacina.scheduling.poll_schedule import PollSchedule, ScheduledTrigger
from cloacina.scheduling.poll_workers import AsyncPolls, PollWorkers
from cloacina.store.runs import TriggerClaim
from cloacina.store.triggers import TriggerStore

log = logging.getLogger("cloacina.trigger")
TriggerEventListener = Callable[[str, str, dict[str, Any]], None]
MIN_PASS_GAP_S = 0.004  # the loop sleeps at least this long between passes: each pass starts the polls due meanwhile


class TriggerScheduler:
    """Polls triggers and fires their workflows. One per runner or poller process."""

    def __init__(
        self,
        store: TriggerStore,
        coordinator: RunCoordinator,
        resolve_workflow: Callable[[str], Workflow],
        *,
        poll_timeout_s: float = 30.0,
        refresh_interval_s: float = 1.0,
        poll_workers: int = 8,
        run_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        gate: PollGate | None = None,
    ) -> None:
        self.store = store
        self.coordinator = coordinator
        self.resolve_workflow = resolve_workflow
        self.poll_timeout_s = poll_timeout_s
        self.refresh_interval_s = refresh_interval_s
        self.run_deadline_s = run_deadline_s
        self.clock = clock
        self.gate = gate
        self._schedule = PollSchedule()
        self._cond = threading.Condition()  # guards the schedule; the loop waits on it
        self.book = PollBook(store, clock)
        self._refresher: threading.Thread | None = None
        self._workers: PollWorkers[ScheduledTrigger | Callable[[], object]] = PollWorkers(
            poll_workers, self._work, "cloacina-poll"
        )
        self._async = AsyncPolls()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._next_refresh = 0.0
        self._listeners: tuple[TriggerEventListener, ...] = ()  # replaced, never mutated: read without a lock

    # -- registration -----------------------------------------------------------------------------------
    def add(self, definition: TriggerDefinition) -> bool:
        """Schedule ``definition`` (replacing a trigger of the same name); ``False`` if it names no workflow."""
        if definition.workflow is None:
            log.error(
                "trigger %r names no workflow; add workflow=... or bind it in a package manifest", definition.name
            )
            return False
        self.store.upsert_schedule(
            definition.name, definition.workflow, definition.poll_interval_ms, definition.allow_concurrent
        )
        state = self.store.get_schedule(definition.name)
        with self._cond:
            self._schedule.add(definition, bool(state["enabled"]) if state else True, self.clock())
            self._cond.notify()
        log.info("trigger scheduled", extra={"trigger": definition.name, "workflow": definition.workflow})
        return True

    def remove(self, name: str) -> None:
        """Stop polling ``name`` (its schedule row and history stay)."""
        with self._cond:
            self._schedule.remove(name)

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Apply an enable/disable at once in this process (other processes see it at their next refresh)."""
        with self._cond:
            entry = self._schedule.entries.get(name)
            if entry is not None and self._schedule.set_enabled(entry, enabled, self.clock()) and enabled:
                self._cond.notify()

    def add_listener(self, listener: TriggerEventListener) -> None:
        """``listener(event, trigger_name, info)`` for events poll, poll_error, fire, dedup_skip (CLI, metrics)."""
        self._listeners = (*self._listeners, listener)

    @property
    def trigger_names(self) -> list[str]:
        with self._cond:
            return sorted(self._schedule.entries)

    def polls_in_progress(self) -> list[str]:
        """Triggers whose poll has started and not returned yet (a timed-out poll stays listed until it returns)."""
        with self._cond:
            return sorted(self._schedule.in_flight)

    # -- the loop ---------------------------------------------------------------------------------------
    def run_once(self) -> float:
        """Start every due poll, record timeouts, refresh from the database when due.

        Returns the seconds until something is next due (how long the loop may sleep).
        """
        now = self.clock()
        if self._refresher is None and now >= self._next_refresh:  # not started: run_once does it all
            self._next_refresh = now + self.refresh_interval_s
            self.refresh()
        with self._cond:
            found = self._schedule.take_due(now, self.poll_timeout_s)
        for name in found.timed_out:
            self._record_error(name, f"poll timed out after {self.poll_timeout_s:g}s")
        for entry in found.started:
            self._start_poll(entry)
        waits = [self.refresh_interval_s if found.next_due is None else found.next_due - now]
        if found.next_timeout is not None:  # wake up in time to see the oldest poll in progress time out
            waits.append(found.next_timeout - now)
        if self._refresher is None:
            waits.append(self._next_refresh - now)
        return max(0.0, min(waits))

    def flush_stats(self) -> None:
        """Write the poll statistics gathered since the last flush (they are batched for speed)."""
        self.book.flush()

    def refresh(self) -> None:
        """Flush poll statistics and re-read enabled flags written by other processes or the CLI."""
        try:
            self.flush_stats()
            states = self.store.schedule_states()
        except Exception as exc:  # the database may be briefly unavailable: keep polling, retry next time
            log.warning("trigger refresh failed (will retry): %s", describe_error(exc))
            return
        now = self.clock()
        with self._cond:
            for name, entry in self._schedule.entries.items():
                state = states.get(name)
                if state is not None:
                    self._schedule.set_enabled(entry, state.enabled, now)

    def start(self) -> None:
        if self._thread is not None:
            return
        # Statistics flushes and enable-flag reads go to the database; they run on their own thread so that a
        # slow database never delays a poll.
        self._refresher = threading.Thread(target=self._refresh_forever, name="cloacina-trigger-sync", daemon=True)
        self._refresher.start()
        self._thread = threading.Thread(target=self._run_forever, name="cloacina-triggers", daemon=True)
        self._thread.start()

    def _refresh_forever(self) -> None:
        while not self._stopped.wait(self.refresh_interval_s):
            self.refresh()

    def _run_forever(self) -> None:
        while not self._stopped.is_set():
            try:
                sleep_s = self.run_once()
            except Exception:
                log.exception("trigger scheduler pass failed")
                sleep_s = self.refresh_interval_s
            with self._cond:
                if not self._stopped.is_set():  # (add, set_enabled and stop wake it sooner)
                    self._cond.wait(max(sleep_s, MIN_PASS_GAP_S))

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop polling; wait up to ``wait_s`` for polls in progress (a hung poll is abandoned, not waited for)."""
        self._stopped.set()
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(wait_s)
        with self._cond:
            while time.monotonic() < deadline and self._schedule.busy():
                self._cond.wait(max(0.0, deadline - time.monotonic()))
        for item in self._workers.shutdown():  # queued, never started: not in progress any more
            if isinstance(item, ScheduledTrigger):
                self._release(item)
        self._async.stop()
        try:
            self.flush_stats()
        except Exception as exc:
            log.warning("could not flush trigger statistics at shutdown: %s", describe_error(exc))

    # -- one poll ---------------------------------------------------------------------------------------
    def _start_poll(self, entry: ScheduledTrigger) -> None:
        if entry.is_async and self.gate is None:
            self._start_async(entry)  # no gate to ask: straight to the event loop
        elif not self._workers.submit(entry):  # sync polls; async ones ask the gate on a worker first
            self._release(entry)  # shutting down

    def _work(self, item: ScheduledTrigger | Callable[[], object]) -> None:
        """What a poll worker does with an item: poll a trigger, or a job (the end of an async poll)."""
        if not isinstance(item, ScheduledTrigger):
            item()
        elif not self._gate_allows(item):
            return
        elif item.is_async:
            self._start_async(item)
        else:
            try:
                value = item.definition.function()
            except Exception as exc:
                self._finish_poll(item, error=exc)
            else:
                self._finish_poll(item, value)

    def _gate_allows(self, entry: ScheduledTrigger) -> bool:
        if self.gate is None:
            return True
        try:
            allowed = self.gate.may_poll(entry.definition)
        except Exception as exc:  # Redis unavailable: do not poll blind (another replica may be polling)
            log.warning("poll gate unavailable for trigger %r: %s", entry.definition.name, describe_error(exc))
            allowed = False
        if not allowed:
            self._release(entry)
        return allowed

    def _start_async(self, entry: ScheduledTrigger) -> None:
        self._async.run(entry.definition.function, self.poll_timeout_s, partial(self._async_done, entry))

    def _async_done(self, entry: ScheduledTrigger, future: Future[Any]) -> None:
        """On the event loop's thread: hand the outcome to a worker (a fire writes to the database)."""
        exc = future.exception() if not future.cancelled() else TimeoutError("poll cancelled")
        if isinstance(exc, TimeoutError):
            exc = TimeoutError(f"poll timed out after {self.poll_timeout_s:g}s")
        job = (
            partial(self._finish_poll, entry, None, exc)
            if exc is not None
            else partial(self._finish_poll, entry, future.result())
        )
        if not self._workers.submit(job):
            self._release(entry)

    def _finish_poll(self, entry: ScheduledTrigger, value: Any = None, error: BaseException | None = None) -> None:
        name = entry.definition.name
        try:
            if entry.timed_out:  # already recorded as a timeout; a late answer is discarded
                return
            result: TriggerResult | None = None
            reason: str | None = None
            if error is not None:
                reason = f"poll raised {describe_error(error)}"
            else:
                try:
                    result = to_trigger_result(value, name)
                except TriggerPollError as exc:
                    reason = exc.reason
            skipped = result is not None and result.is_skip_result()
            wall = self.book.polled(name, entry.poll_span, skipped=skipped)
            self._emit("poll", name, {})
            if reason is not None:
                self._record_error(name, reason)
            elif result is not None and not skipped:
                self._fire(entry.definition, result, wall)
        except Exception:
            log.exception("handling a poll of trigger %r failed", name)
        finally:
            self._release(entry)

    def _release(self, entry: ScheduledTrigger) -> None:
        with self._cond:
            self._schedule.release(entry)
            if self._stopped.is_set():  # only stop() waits for polls to finish; the loop itself need not wake
                self._cond.notify_all()

    def _fire(self, definition: TriggerDefinition, result: TriggerResult, fired_at: datetime) -> None:
        name = definition.name
        user_ctx = result.context.to_dict() if result.context is not None else {}
        digest = context_hash(user_ctx)
        run_input = dict(user_ctx)
        run_input.setdefault("trigger_name", name)
        run_input.setdefault("triggered_at", fired_at.isoformat())
        try:
            if definition.package_fingerprint is not None:
                workflow = package_workflow(definition.package_fingerprint, definition.workflow or "")
            else:
                workflow = self.resolve_workflow(definition.workflow or "")
        except ValueError as exc:
            self._record_error(name, f"cannot fire: {exc}")
            return
        token: str | None = None
        dedup = not definition.allow_concurrent
        if dedup and self.gate is not None:
            proceed, token = self.gate.before_fire(definition, digest)
            if not proceed:
                self._count(name, dedup_skips=1)
                self._emit("dedup_skip", name, {"context_hash": digest})
                return
        claim = TriggerClaim(name, digest, dedup=dedup, lock_token=token)
        run_id: str | None = None
        try:
            run_id = self.coordinator.create_run(
                workflow,
                run_input,
                trigger=claim,
                deadline_s=self.run_deadline_s,
                package_fingerprint=definition.package_fingerprint,
            )
        finally:
            if dedup and self.gate is not None:
                self.gate.after_fire(definition, digest, token, run_id)
        if run_id is None:
            self._count(name, dedup_skips=1)
            log.debug("fire skipped: a run for this context is active", extra={"trigger": name, "hash": digest})
            self._emit("dedup_skip", name, {"context_hash": digest})
            return
        self._count(name, fires=1, last_fire_at=fired_at)
        log.info("trigger fired", extra={"trigger": name, "run_id": run_id, "workflow": workflow.name})
        self._emit("fire", name, {"run_id": run_id, "context_hash": digest})

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _count(self, name: str, **deltas: Any) -> None:
        self.book.count(name, **deltas)

    def _record_error(self, name: str, reason: str) -> None:
        self.book.record_error(name, reason)
        self._emit("poll_error", name, {"reason": reason})

    def _emit(self, event: str, name: str, info: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(event, name, info)
            except Exception:
                log.exception("trigger event listener failed")
