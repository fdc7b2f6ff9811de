"""Deferred attempt starts: a short task's start is recorded by its finish, a longer one's shortly after it began.

On PostgreSQL a delivery *peeks* at its task (a read) instead of recording its start, so a task shorter than
:data:`RECORD_AFTER_MAX_S` costs one statement, its finish (``Ready -> Completed``, see
:mod:`cloacina.store.run_fast_path`). One still running then records its start from the heartbeat thread and is
``Running`` from there on (the console shows it, the sweeper watches its heartbeat); so does one that defers
(``handle.defer_until``) before it gives its slot back. What is lost while nothing is recorded: a worker killed
during such a short task leaves the task Ready, and the sweeper republishes its stalled run (at-least-once, as for
any killed attempt); a redelivered message records its start first, so a task that keeps killing its worker is
counted as lost and eventually fails.

Only a message that is its task's only one defers: two deliveries that both peeked a task Ready would both run it.
Duplicates come from recovery, so a redelivered message, any attempt after the first and a task Ready for longer
than the coordinator's ``defer_start_within_s`` (half the sweeper's ``stale_run_s``) record their start first, and
the sweeper sends a lost attempt's task alone instead of republishing its run.

Exactly one of the two writes records the start: :meth:`DeferredStart.record_now` (heartbeat, defer) and
:meth:`DeferredStart.settle` (the finish) take the same lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cloacina.execution.task_handle import ConcurrencySlot
from cloacina.store.runs import PendingStart, StartedAttempt

log = logging.getLogger("cloacina.run")
RECORD_AFTER_MAX_S = 1.0  # a task running this long (or half a heartbeat interval, if shorter) records its start


class DeferredStart:
    """The not yet recorded start of one attempt."""

    def __init__(self, started: StartedAttempt, worker: str | None, record: Callable[[], bool]) -> None:
        if started.started_at is None:
            raise ValueError("a deferred start needs the attempt's start time")
        self.pending = PendingStart(started.started_at, worker)
        self._record = record
        self._lock = threading.Lock()
        self._state = "deferred"  # -> "recorded" | "refused" (another delivery took the task) | "settled"

    @property
    def is_deferred(self) -> bool:
        return self._state == "deferred"

    def record_now(self) -> bool:
        """Record the start unless the finish already did (or will); ``True`` if it is recorded by this attempt.
        A write that fails (the database is briefly away) leaves it deferred, to try again."""
        with self._lock:
            if self._state == "deferred":
                try:
                    self._state = "recorded" if self._record() else "refused"
                except Exception as exc:
                    log.warning("recording the start of a task attempt failed (will retry): %s", exc)
                    return False
            return self._state in ("recorded", "settled")

    def settle(self) -> PendingStart | None:
        """The attempt is finishing: what its finish must record as its start (``None``: already recorded, or
        refused, and then the finish will not apply either)."""
        with self._lock:
            if self._state != "deferred":
                return None
            self._state = "settled"
            return self.pending


class RecordingSlot:
    """The attempt's concurrency slot; giving it back (``defer_until``) records the deferred start first, so a
    deferring task is ``Running`` with a heartbeat while it waits."""

    def __init__(self, slot: ConcurrencySlot, start: DeferredStart) -> None:
        self._slot = slot
        self._start = start

    @property
    def is_held(self) -> bool:
        return self._slot.is_held

    def release(self) -> None:
        self._start.record_now()
        self._slot.release()

    def reacquire(self) -> bool:
        return self._slot.reacquire()
