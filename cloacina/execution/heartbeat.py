"""Heartbeats of running task attempts, written to SQL so a sweeper can tell a live task from a dead worker::

beats = AttemptHeartbeats(store=None, interval_s=5.0)
with beats.track("run-id", "task-id", 1):
    run_the_task()

An attempt whose start is deferred (:mod:`cloacina.execution.deferred_start`) records it from this thread once it
has run for ``record_after_s`` (the smaller of half the interval and a second); from then on it beats like any.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cloacina.execution.deferred_start import RECORD_AFTER_MAX_S, DeferredStart

if TYPE_CHECKING:
    from cloacina.store.runs import RunStore

log = logging.getLogger("cloacina.heartbeat")


class AttemptHeartbeats:
    """One background thread that marks every attempt running in this process as alive, every ``interval_s``."""

    def __init__(self, store: RunStore, interval_s: float = 5.0) -> None:
        self.store = store
        self.interval_s = interval_s
        self.record_after_s = min(interval_s / 2, RECORD_AFTER_MAX_S)
        self._running: dict[tuple[str, str, int], int] = {}
        self._deferred: dict[tuple[str, str, int], tuple[float, DeferredStart]] = {}  # key -> (due, start)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def track(self, run_id: str, task_id: str, attempt: int, deferred: DeferredStart | None = None) -> Iterator[None]:
        key = (run_id, task_id, attempt)
        with self._lock:
            if deferred is not None and deferred.is_deferred:
                self._deferred[key] = (time.monotonic() + self.record_after_s, deferred)
            else:
                self._running[key] = self._running.get(key, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cloacina-heartbeat", daemon=True)
                self._thread.start()
        if deferred is not None:
            self._wake.set()  # its start may be due before the next beat
        try:
            yield
        finally:
            with self._lock:
                # Still deferred: forget it. Recorded meanwhile: it beats like any other. Refused: neither.
                if self._deferred.pop(key, None) is None and key in self._running:
                    self._running[key] -= 1
                    if self._running[key] <= 0:
                        del self._running[key]

    def record_due_starts(self, now: float | None = None) -> float | None:
        """Record the starts that are due (moving those attempts to the beating ones); when the next one is due."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [(key, start) for key, (at, start) in self._deferred.items() if at <= now]
        for key, start in due:
            recorded = start.record_now()
            with self._lock:
                if recorded and self._deferred.pop(key, None) is not None:
                    self._running[key] = self._running.get(key, 0) + 1
                elif not start.is_deferred:
                    self._deferred.pop(key, None)  # refused, or its finish recorded it: nothing to beat
        with self._lock:
            return min((at for at, _ in self._deferred.values()), default=None)

    def beat_once(self) -> int:
        with self._lock:
            keys = list(self._running)
        if not keys:
            return 0
        return self.store.heartbeat(keys)

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.interval_s
        next_start: float | None = None
        while not self._stop.is_set():
            wait_until = next_beat if next_start is None else min(next_beat, next_start)
            self._wake.wait(max(0.0, wait_until - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                next_start = self.record_due_starts()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval_s
                    self.beat_once()
            except Exception as exc:  # the database may be briefly down; the next beat will do
                log.warning("task heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
