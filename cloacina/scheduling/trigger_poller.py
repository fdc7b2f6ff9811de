"""TriggerScheduler: polls every registered trigger on its own interval and turns fires into runs.

Guarantees (DESIGN §3):
- Each trigger is polled every ``poll_interval``, measured from the start of its previous poll. Polls run on a
  thread pool (async triggers on one event loop), never on the scheduling thread, so a slow or hung trigger
  delays nobody else. A poll still running after ``poll_timeout_s`` is recorded as an error; that trigger is not
  polled again until the hung call returns (a second call would most likely hang too).
- A poll that raises, times out or returns the wrong type is logged with the trigger's name and reason,
  counted on the schedule row, and polling goes on.
- A fire with ``allow_concurrent=False`` creates its run through a SQL claim on (trigger, context hash); a
  refused claim is a *dedup skip*, counted, never an error. The key frees in the transaction that ends the run.

The loop follows the LoopService shape: :meth:`run_once` does one pass (used directly by tests), and
:meth:`start` runs it on a daemon thread until :meth:`stop`.

>>> # Typical use is through DefaultRunner; see tests/test_triggers.py for direct use.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from cloacina.store.runs import TriggerClaim
from cloacina.store.triggers import TriggerStore

log = logging.getLogger("cloacina.trigger")
TriggerEventListener = Callable[[str, str, dict[str, Any]], None]


@dataclass
class _Entry:
    definition: TriggerDefinition
    enabled: bool
    interval_s: float
    next_due: float
    in_flight_since: float | None = None
    timed_out: bool = False


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
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self.book = PollBook(store, clock)
        self._in_flight: dict[str, _Entry] = {}
        self._refresher: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=poll_workers, thread_name_prefix="cloacina-poll")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._next_refresh = 0.0
        self._listeners: list[TriggerEventListener] = []

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
        state = self.store.schedule_states().get(definition.name)
        with self._cond:
            entry = _Entry(
                definition=definition,
                enabled=state.enabled if state else True,
                interval_s=definition.poll_interval_ms / 1000,
                # The first poll comes one interval after registration, as every later one does.
                next_due=self.clock() + definition.poll_interval_ms / 1000,
            )
            # A poll of the replaced definition may still be running; it finishes on its own entry.
            self._in_flight.pop(definition.name, None)
            self._entries[definition.name] = entry
            self._push(entry)
            self._cond.notify()
        log.info("trigger scheduled", extra={"trigger": definition.name, "workflow": definition.workflow})
        return True

    def remove(self, name: str) -> None:
        """Stop polling ``name`` (its schedule row and history stay)."""
        with self._cond:
            self._entries.pop(name, None)

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Apply an enable/disable at once in this process (other processes see it at their next refresh)."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is not None and entry.enabled != enabled:
                entry.enabled = enabled
                if enabled:
                    entry.next_due = self.clock()
                    self._push(entry)
                    self._cond.notify()

    def add_listener(self, listener: TriggerEventListener) -> None:
        """``listener(event, trigger_name, info)`` for events poll, poll_error, fire, dedup_skip (CLI, metrics)."""
        self._listeners.append(listener)

    @property
    def trigger_names(self) -> list[str]:
        with self._cond:
            return sorted(self._entries)

    def polls_in_progress(self) -> list[str]:
        """Triggers whose poll has started and not returned yet (a timed-out poll stays listed until it returns)."""
        with self._cond:
            return sorted(self._in_flight)

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, (entry.next_due, next(self._seq), entry.definition.name))

    # -- the loop ---------------------------------------------------------------------------------------
    def run_once(self) -> float:
        """Start every due poll, record timeouts, refresh from the database when due.

        Returns the seconds until something is next due (how long the loop may sleep).
        """
        now = self.clock()
        if self._refresher is None and now >= self._next_refresh:  # not started: run_once does it all
            self._next_refresh = now + self.refresh_interval_s
            self.refresh()
        due: list[_Entry] = []
        timed_out: list[str] = []
        with self._cond:
            for busy in self._in_flight.values():  # only polls in progress, not every trigger: O(busy), not O(all)
                if (
                    busy.in_flight_since is not None
                    and not busy.timed_out
                    and now - busy.in_flight_since >= self.poll_timeout_s
                ):
                    busy.timed_out = True
                    timed_out.append(busy.definition.name)
            while self._heap and self._heap[0][0] <= now:
                due_at, _, name = heapq.heappop(self._heap)
                entry = self._entries.get(name)
                if entry is None or entry.next_due != due_at:
                    continue  # removed or rescheduled: a stale heap item
                entry.next_due = now + entry.interval_s
                self._push(entry)
                if entry.enabled and entry.in_flight_since is None:
                    entry.in_flight_since = now
                    entry.timed_out = False
                    self._in_flight[name] = entry
                    due.append(entry)
            sleep_s = (self._heap[0][0] - now) if self._heap else self.refresh_interval_s
            deadlines = [
                e.in_flight_since + self.poll_timeout_s - now
                for e in self._in_flight.values()
                if e.in_flight_since is not None and not e.timed_out
            ]
        for name in timed_out:
            self._record_error(name, f"poll timed out after {self.poll_timeout_s:g}s")
        for entry in due:
            self._start_poll(entry, now)
        refresh_in = [self._next_refresh - now] if self._refresher is None else []
        return max(0.0, min([sleep_s, *refresh_in, *deadlines]))

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
        with self._cond:
            for name, entry in self._entries.items():
                state = states.get(name)
                if state is not None and state.enabled != entry.enabled:
                    entry.enabled = state.enabled
                    if state.enabled:
                        entry.next_due = self.clock()
                        self._push(entry)

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
                if not self._stopped.is_set():
                    self._cond.wait(sleep_s)

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop polling; wait up to ``wait_s`` for polls in progress (a hung poll is abandoned, not waited for)."""
        self._stopped.set()
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(wait_s)
        with self._cond:
            while time.monotonic() < deadline and any(
                e.in_flight_since is not None and not e.timed_out for e in self._entries.values()
            ):
                self._cond.wait(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        try:
            self.flush_stats()
        except Exception as exc:
            log.warning("could not flush trigger statistics at shutdown: %s", describe_error(exc))

    # -- one poll ---------------------------------------------------------------------------------------
    def _start_poll(self, entry: _Entry, started: float) -> None:
        definition = entry.definition
        if definition.is_async and self.gate is not None:
            try:  # ask the gate off the scheduling thread, then hand the coroutine to the loop
                self._pool.submit(lambda: self._gate_allows(entry) and self._start_async(entry, started))
            except RuntimeError:
                self._release(entry)
            return
        if definition.is_async:
            self._start_async(entry, started)
            return
        try:
            self._pool.submit(self._poll_sync, entry, started)
        except RuntimeError:  # shutting down
            self._release(entry)

    def _gate_allows(self, entry: _Entry) -> bool:
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

    def _start_async(self, entry: _Entry, started: float) -> bool:
        definition = entry.definition
        loop = self._event_loop()
        coro = asyncio.wait_for(definition.function(), self.poll_timeout_s)
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        future.add_done_callback(lambda f: self._submit_result(entry, started, f))
        return True

    def _poll_sync(self, entry: _Entry, started: float) -> None:
        if not self._gate_allows(entry):
            return
        try:
            value = entry.definition.function()
        except Exception as exc:
            self._finish_poll(entry, started, error=exc)
        else:
            self._finish_poll(entry, started, value=value)

    def _submit_result(self, entry: _Entry, started: float, future: Future[Any]) -> None:
        exc = future.exception() if not future.cancelled() else TimeoutError("poll cancelled")
        if isinstance(exc, TimeoutError):
            exc = TimeoutError(f"poll timed out after {self.poll_timeout_s:g}s")
        try:
            if exc is not None:
                self._pool.submit(self._finish_poll, entry, started, None, exc)
            else:
                self._pool.submit(self._finish_poll, entry, started, future.result(), None)
        except RuntimeError:
            self._release(entry)

    def _finish_poll(
        self, entry: _Entry, started: float, value: Any = None, error: BaseException | None = None
    ) -> None:
        name = entry.definition.name
        try:
            with self._cond:
                if entry.timed_out:  # already recorded as a timeout; a late answer is discarded
                    return
            wall = datetime.now(UTC)
            self._count(name, polls=1, last_poll_at=wall, next_poll_at=wall + timedelta(seconds=entry.interval_s))
            self._emit("poll", name, {})
            if error is not None:
                self._record_error(name, f"poll raised {describe_error(error)}")
                return
            try:
                result = to_trigger_result(value, name)
            except TriggerPollError as exc:
                self._record_error(name, exc.reason)
                return
            if result.is_skip_result():
                self._count(name, skips=1)
                return
            self._fire(entry.definition, result, wall)
        except Exception:
            log.exception("handling a poll of trigger %r failed", name)
        finally:
            self._release(entry)

    def _release(self, entry: _Entry) -> None:
        with self._cond:
            entry.in_flight_since = None
            entry.timed_out = False
            if self._in_flight.get(entry.definition.name) is entry:
                del self._in_flight[entry.definition.name]
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
        for listener in list(self._listeners):
            try:
                listener(event, name, info)
            except Exception:
                log.exception("trigger event listener failed")

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._cond:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=loop.run_forever, name="cloacina-async-polls", daemon=True)
                self._loop_thread.start()
                self._loop = loop
            return self._loop
